"""Flow files (.flo / .npy) and the Middlebury colour coding."""

from __future__ import annotations

import hashlib
import math
import struct

import numpy as np
import pytest

from densessl.datasets.flow_io import flow_to_color, read_flo, read_flow, write_flo, write_flow
from densessl.errors import InputError


def _random_flow(height: int = 7, width: int = 11, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 5, size=(height, width, 2)).astype(np.float32)


def test_flo_round_trip_and_byte_layout(tmp_path):
    flow = _random_flow()
    path = tmp_path / "sub" / "a.flo"
    write_flo(path, flow)
    data = path.read_bytes()
    # Independent check of the Middlebury layout with struct.
    assert data[:4] == b"PIEH"
    magic, width, height = struct.unpack("<fii", data[:12])
    assert magic == pytest.approx(202021.25) and (width, height) == (11, 7)
    assert len(data) == 12 + 4 * 2 * 11 * 7
    values = struct.unpack(f"<{2 * 11 * 7}f", data[12:])
    assert values[:2] == (flow[0, 0, 0], flow[0, 0, 1])  # (dx, dy) interleaved, row-major
    assert values[2 * 11] == flow[1, 0, 0]
    back = read_flo(path)
    assert back.dtype == np.float32 and back.shape == (7, 11, 2)
    np.testing.assert_array_equal(back, flow)


def test_read_flo_of_a_struct_written_file(tmp_path):
    path = tmp_path / "b.flo"
    values = [float(i) for i in range(2 * 3 * 2)]
    header = struct.pack("<fii", 202021.25, 3, 2)
    path.write_bytes(header + struct.pack(f"<{len(values)}f", *values))
    flow = read_flo(path)
    assert flow.shape == (2, 3, 2)
    assert flow[1, 2, 1] == 11.0 and flow[0, 1, 0] == 2.0


@pytest.mark.parametrize("suffix", [".flo", ".npy"])
def test_read_write_flow_dispatch(tmp_path, suffix):
    flow = _random_flow(5, 4, seed=1)
    path = tmp_path / f"f{suffix}"
    write_flow(path, flow)
    np.testing.assert_array_equal(read_flow(path), flow)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"PIE", "12"),
        (struct.pack("<fii", 1.5, 2, 2) + bytes(32), "magic"),
        (struct.pack("<fii", 202021.25, 2, 2) + bytes(31), "expected"),
        (struct.pack("<fii", 202021.25, 2, 2) + bytes(40), "expected"),
        (struct.pack("<fii", 202021.25, -2, 2) + bytes(32), "width"),
    ],
)
def test_corrupt_flo_is_rejected_naming_the_file(tmp_path, content, message):
    path = tmp_path / "bad.flo"
    path.write_bytes(content)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(InputError) as info:
        read_flo(path)
    assert str(path) in str(info.value) and message in str(info.value)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before  # never modified


def test_flow_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_flow(tmp_path / "missing.flo")
    with pytest.raises(InputError, match="unknown flow file type"):
        read_flow(tmp_path / "x.png")
    with pytest.raises(InputError, match="H×W×2"):
        write_flo(tmp_path / "y.flo", np.zeros((4, 4, 3), np.float32))
    with pytest.raises(InputError, match="unknown flow file type"):
        write_flow(tmp_path / "y.txt", np.zeros((4, 4, 2), np.float32))
    np.save(tmp_path / "z.npy", np.zeros((4, 4)))
    with pytest.raises(InputError, match="z.npy"):
        read_flow(tmp_path / "z.npy")


# --- Middlebury colour coding ------------------------------------------------------------------


def _naive_wheel() -> list[tuple[float, float, float]]:
    """The colour wheel written out segment by segment, as in the Middlebury description."""
    wheel = []
    for i in range(15):
        wheel.append((255, math.floor(255 * i / 15), 0))  # red -> yellow
    for i in range(6):
        wheel.append((255 - math.floor(255 * i / 6), 255, 0))  # yellow -> green
    for i in range(4):
        wheel.append((0, 255, math.floor(255 * i / 4)))  # green -> cyan
    for i in range(11):
        wheel.append((0, 255 - math.floor(255 * i / 11), 255))  # cyan -> blue
    for i in range(13):
        wheel.append((math.floor(255 * i / 13), 0, 255))  # blue -> magenta
    for i in range(6):
        wheel.append((255, 0, 255 - math.floor(255 * i / 6)))  # magenta -> red
    return wheel


def _naive_color(u: float, v: float, max_flow: float) -> tuple[int, int, int]:
    wheel = _naive_wheel()
    n = len(wheel)
    u, v = u / max_flow, v / max_flow
    rad = math.sqrt(u * u + v * v)
    a = math.atan2(-v, -u) / math.pi
    fk = (a + 1) / 2 * (n - 1)
    k0 = int(math.floor(fk))
    k1 = 0 if k0 + 1 == n else k0 + 1
    f = fk - k0
    out = []
    for c in range(3):
        col = ((1 - f) * wheel[k0][c] + f * wheel[k1][c]) / 255
        col = 1 - rad * (1 - col) if rad <= 1 else col * 0.75
        out.append(int(math.floor(255 * col)))
    return tuple(out)


def test_flow_to_color_matches_naive_reference():
    flow = _random_flow(6, 9, seed=3)
    flow[0, 0] = (0, 0)
    max_flow = 8.0  # some vectors exceed it: darkened branch
    image = flow_to_color(flow, max_flow=max_flow)
    assert image.shape == (6, 9, 3) and image.dtype == np.uint8
    for y in range(6):
        for x in range(9):
            expected = _naive_color(float(flow[y, x, 0]), float(flow[y, x, 1]), max_flow)
            assert np.abs(image[y, x].astype(int) - expected).max() <= 1, (y, x)


def test_flow_to_color_landmarks():
    flow = np.array([[[0, 0], [1, 0], [0, 1], [-1, 0], [np.nan, 0]]], dtype=np.float32)
    image = flow_to_color(flow)
    assert tuple(image[0, 0]) == (255, 255, 255)  # no motion: white
    assert tuple(image[0, 4]) == (0, 0, 0)  # unknown: black
    right, down, left = (image[0, i].astype(int) for i in (1, 2, 3))
    assert right[0] == 255 and right[1] < 30 and right[2] < 30  # +x: red
    assert left[2] > 200 and left[0] < 30  # -x: cyan-blue
    assert down[0] > 200 and down[1] > 150 and down[2] < 30  # +y: yellow
    # default scale = largest magnitude; doubling every vector changes nothing
    np.testing.assert_array_equal(flow_to_color(np.nan_to_num(flow) * 2),
                                  flow_to_color(np.nan_to_num(flow)))
    with pytest.raises(InputError, match="max_flow"):
        flow_to_color(flow, max_flow=0)
