"""DenseCRF refinement: input checks, the missing-package error, and behaviour on synthetic frames.

The references are written here: IoU with plain loops over pixels, the clipped probability
map with ``min`` / ``max`` per pixel, a blurred and shifted mask built with explicit box sums.
Inference tests skip when ``pydensecrf`` (``pip install 'densessl[crf]'``) is not installed.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from densessl.errors import InputError
from densessl.eval.crf import CRFConfig, crf_available, refine_foreground

H, W = 64, 96
TOP, BOTTOM, LEFT, RIGHT = 16, 48, 24, 72  # the object: rows TOP..BOTTOM-1, cols LEFT..RIGHT-1
OBJECT_RGB = (200, 60, 50)
BACKGROUND_RGB = (40, 90, 160)


def naive_iou(pred: np.ndarray, truth: np.ndarray) -> float:
    inter = union = 0
    for y in range(pred.shape[0]):
        for x in range(pred.shape[1]):
            a, b = bool(pred[y, x]), bool(truth[y, x])
            inter += a and b
            union += a or b
    return inter / union if union else 1.0


def two_region_frame() -> tuple[np.ndarray, np.ndarray]:
    """``(H×W×3 uint8 image, H×W bool truth)``: a flat red rectangle on a flat blue background."""
    truth = np.zeros((H, W), dtype=bool)
    image = np.zeros((H, W, 3), dtype=np.uint8)
    for y in range(H):
        for x in range(W):
            inside = TOP <= y < BOTTOM and LEFT <= x < RIGHT
            truth[y, x] = inside
            image[y, x] = OBJECT_RGB if inside else BACKGROUND_RGB
    return image, truth


def shifted_blurred_noisy_prob(shift: int, box: int, noise: float, seed: int) -> np.ndarray:
    """The object's mask moved ``shift`` px right, box-blurred (``box``×``box``, edge-clamped),
    squeezed to [0.15, 0.85], plus Gaussian noise, clipped to [0, 1]."""
    moved = np.zeros((H, W))
    for y in range(TOP, BOTTOM):
        for x in range(LEFT + shift, RIGHT + shift):
            moved[y, x] = 1.0
    half = box // 2
    blurred = np.zeros((H, W))
    for y in range(H):
        for x in range(W):
            total = 0.0
            for dy in range(-half, half + 1):
                for dx in range(-half, half + 1):
                    total += moved[min(max(y + dy, 0), H - 1), min(max(x + dx, 0), W - 1)]
            blurred[y, x] = total / box**2
    rng = np.random.default_rng(seed)
    return np.clip(0.15 + 0.7 * blurred + rng.normal(0.0, noise, (H, W)), 0.0, 1.0)


# ----------------------------------------------------------------------------- without pydensecrf


def test_missing_pydensecrf_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes every import of these names fail, installed or not.
    for name in ("pydensecrf", "pydensecrf.densecrf", "pydensecrf.utils"):
        monkeypatch.setitem(sys.modules, name, None)
    assert crf_available() is False
    image, truth = two_region_frame()
    with pytest.raises(InputError) as caught:
        refine_foreground(image, truth.astype(np.float64))
    message = str(caught.value)
    assert "pip install 'densessl[crf]'" in message
    assert "pydensecrf2" in message


def test_crf_available_matches_import() -> None:
    try:
        import pydensecrf.densecrf  # noqa: F401
    except ImportError:
        expected = False
    else:
        expected = True
    assert crf_available() is expected


@pytest.mark.parametrize(
    ("image", "prob", "argument"),
    [
        (np.zeros((H, W, 3), np.float32), np.zeros((H, W)), "image"),  # not uint8
        (np.zeros((H, W), np.uint8), np.zeros((H, W)), "image"),  # no channels
        (np.zeros((H, W, 4), np.uint8), np.zeros((H, W)), "image"),  # RGBA
        ([[[0, 0, 0]]], np.zeros((1, 1)), "image"),  # not an array
        (np.zeros((H, W, 3), np.uint8), np.zeros((H, W + 1)), "foreground_prob"),  # size mismatch
        (np.zeros((H, W, 3), np.uint8), np.zeros((H, W, 1)), "foreground_prob"),  # extra axis
        (np.zeros((H, W, 3), np.uint8), np.full((H, W), np.nan), "foreground_prob"),
        (np.zeros((H, W, 3), np.uint8), np.full((H, W), np.inf), "foreground_prob"),
        (np.zeros((H, W, 3), np.uint8), np.full((H, W), 1.5), "foreground_prob"),
        (np.zeros((H, W, 3), np.uint8), np.full((H, W), -0.1), "foreground_prob"),
        (np.zeros((H, W, 3), np.uint8), np.full((H, W), "a"), "foreground_prob"),
    ],
)
def test_bad_inputs_name_the_argument(image: object, prob: object, argument: str) -> None:
    with pytest.raises(InputError, match=f"'{argument}'"):
        refine_foreground(image, prob)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "value"),
    [("iterations", -1), ("iterations", 2.5), ("gaussian_sxy", 0.0), ("bilateral_srgb", float("nan")),
     ("bilateral_compat", -1.0), ("clip", 0.0), ("clip", 0.5)],
)
def test_bad_config_names_the_field(field: str, value: object) -> None:
    with pytest.raises(InputError, match=f"CRFConfig.{field}"):
        CRFConfig(**{field: value})


# ----------------------------------------------------------------------------- with pydensecrf


def test_zero_iterations_returns_the_clipped_input() -> None:
    """With no mean-field step the output is softmax(-unary): the input clipped to
    [clip, 1 - clip], foreground being label 1 (checks the clip and the label order)."""
    pytest.importorskip("pydensecrf")
    image, _ = two_region_frame()
    rng = np.random.default_rng(3)
    prob = rng.random((H, W))
    prob[0, :10] = 0.0
    prob[1, :10] = 1.0
    config = CRFConfig(iterations=0, clip=1e-3)
    out = refine_foreground(image, prob, config)
    expected = np.zeros((H, W))
    for y in range(H):
        for x in range(W):
            expected[y, x] = min(max(prob[y, x], 1e-3), 1 - 1e-3)
    assert out.shape == (H, W)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_refinement_snaps_a_shifted_blurred_mask_to_the_colour_edge() -> None:
    """A 4 px shift, a 7×7 blur and noise (σ = 0.15) give a poor thresholded mask; the
    colour edge pulls the refined mask back onto the object: IoU ≥ 0.95 and ≥ 0.1 above the
    unrefined mask. Neither input is modified."""
    pytest.importorskip("pydensecrf")
    image, truth = two_region_frame()
    prob = shifted_blurred_noisy_prob(shift=4, box=7, noise=0.15, seed=0)
    image_before, prob_before = image.copy(), prob.copy()

    out = refine_foreground(image, prob)

    iou_before = naive_iou(prob > 0.5, truth)
    iou_after = naive_iou(out > 0.5, truth)
    assert iou_before < 0.85
    assert iou_after >= 0.95
    assert iou_after >= iou_before + 0.1
    assert np.all((out >= 0) & (out <= 1))
    np.testing.assert_array_equal(image, image_before)
    np.testing.assert_array_equal(prob, prob_before)


def test_uncertain_map_on_flat_image_stays_uncertain() -> None:
    """All-0.5 on a flat grey image: both labels have the same unary and the Potts kernels are
    symmetric, so 0.5 is the mean-field fixed point. Asserted: every output within 1e-3 of 0.5,
    i.e. no pixel is pushed towards a confident (and arbitrary) label."""
    pytest.importorskip("pydensecrf")
    image = np.full((H, W, 3), 128, dtype=np.uint8)
    out = refine_foreground(image, np.full((H, W), 0.5))
    assert np.abs(out - 0.5).max() < 1e-3


def test_confident_mask_aligned_with_the_edge_is_kept() -> None:
    """A hard 0 / 1 mask that already follows the colour edge is left as it is (thresholded)."""
    pytest.importorskip("pydensecrf")
    image, truth = two_region_frame()
    out = refine_foreground(image, truth.astype(np.float32))
    np.testing.assert_array_equal(out > 0.5, truth)
