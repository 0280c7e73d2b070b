"""The cached flow layout <flow_root>/<gap>/<seq>/<frame>.flo."""

from __future__ import annotations

import numpy as np
import pytest

from densessl.datasets.flow_cache import (
    available_gaps, find_flow, flow_path, gap_folder, parse_gap, read_cached_flow,
)
from densessl.datasets.flow_io import write_flow
from densessl.errors import InputError


def test_gap_names_round_trip_and_zero_is_refused():
    for gap in (1, -1, 2, -2, 10):
        assert parse_gap(gap_folder(gap)) == gap
    assert gap_folder(2) == "+2" and gap_folder(-1) == "-1" and parse_gap("3") == 3
    for bad in ("0", "+0", "x", "1.5"):
        with pytest.raises(InputError, match="gap"):
            parse_gap(bad)
    with pytest.raises(InputError):
        gap_folder(0)


def test_paths_lookup_and_reading(tmp_path):
    flow = np.random.default_rng(0).normal(size=(4, 5, 2)).astype(np.float32)
    write_flow(flow_path(tmp_path, 1, "seq", "00000"), flow)
    write_flow(flow_path(tmp_path, -2, "seq", "00003", ".npy"), flow * 2)
    (tmp_path / "vis").mkdir()  # other folders are not gaps
    assert flow_path(tmp_path, -2, "seq", "00003", ".npy") == tmp_path / "-2" / "seq" / "00003.npy"
    assert available_gaps(tmp_path) == [1, -2]
    assert find_flow(tmp_path, 1, "seq", "00001") is None
    assert np.array_equal(read_cached_flow(tmp_path, 1, "seq", "00000"), flow)
    assert np.array_equal(read_cached_flow(tmp_path, -2, "seq", "00003"), flow * 2)
    with pytest.raises(InputError, match="compute_flow") as info:
        read_cached_flow(tmp_path, 2, "seq", "00000")
    assert "+2" in str(info.value)
    with pytest.raises(InputError, match="not found"):
        available_gaps(tmp_path / "missing")
    with pytest.raises(InputError):
        flow_path(tmp_path, 1, "seq", "00000", ".png")
