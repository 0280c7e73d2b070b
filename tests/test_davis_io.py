"""DAVIS-2016/2017 readers and result-mask I/O."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import MINI_DAVIS, TINY_SEQUENCES, requires_mini_davis
from PIL import Image

from densessl.datasets.davis import (
    DavisDataset,
    DavisSequence,
    davis_palette,
    read_result_masks,
    write_indexed_png,
)
from densessl.errors import InputError


def test_reads_the_2017_layout(tiny_davis: Path):
    data = DavisDataset(tiny_davis)
    assert data.sequence_names == [name for name, _ in TINY_SEQUENCES]
    assert len(data) == 3
    assert [seq.name for seq in data] == data.sequence_names
    for (name, num_objects), seq in zip(TINY_SEQUENCES, data):
        assert data[name] is seq
        assert seq.num_frames == len(seq) == 8
        assert seq.frame_names == [f"{t:05d}" for t in range(8)]
        assert seq.size == (64, 96)
        frame = seq.frame(3)
        assert frame.shape == (64, 96, 3) and frame.dtype == np.uint8
        mask = seq.mask(3)
        assert mask.shape == (64, 96) and mask.dtype == np.uint8
        assert seq.object_ids() == list(range(1, num_objects + 1))
        np.testing.assert_array_equal(seq.first_mask(), seq.mask(0))
        masks = seq.masks()
        assert masks.shape == (8, 64, 96)
        np.testing.assert_array_equal(masks[5], seq.mask(5))
    assert data[1].name == TINY_SEQUENCES[1][0]
    # multi-object sequences carry void (255) around object 1; it is not an object id
    assert (data["cat-jump"].first_mask() == 255).any()


def test_masks_keep_palette_ids_and_frames_are_rgb(tiny_davis: Path):
    seq = DavisDataset(tiny_davis)["dog-walk"]
    raw = np.array(Image.open(seq.mask_paths[2]))
    np.testing.assert_array_equal(seq.mask(2), raw)
    frame = seq.frame(0)
    # object 1 is painted red on the frames: red dominates inside its mask
    inside = seq.mask(0) == 1
    assert frame[inside][:, 0].mean() > frame[inside][:, 2].mean() + 50


def test_palette_and_writer_are_reexported(tmp_path: Path):
    ids = np.arange(12, dtype=np.uint8).reshape(3, 4)
    write_indexed_png(tmp_path / "a.png", ids)
    image = Image.open(tmp_path / "a.png")
    assert image.mode == "P"
    np.testing.assert_array_equal(np.array(image), ids)
    assert tuple(davis_palette()[1]) == (128, 0, 0)


def test_reads_the_2016_layout_with_frame_pair_lists(tiny_davis_factory):
    root = tiny_davis_factory("d16", year=2016)
    data = DavisDataset(root, year=2016)
    assert data.sequence_names == [name for name, _ in TINY_SEQUENCES]
    seq = data["dog-walk"]
    assert seq.object_ids() == [1]
    values = set(np.unique(seq.masks()).tolist())
    assert values <= {0, 1} and 1 in values  # 0/255 on disk -> object 1
    raw = np.array(Image.open(seq.mask_paths[0]))
    np.testing.assert_array_equal(seq.mask(0), (raw != 0).astype(np.uint8))


@pytest.mark.parametrize("mode", ["LA", "P"])
def test_2016_masks_in_la_and_palette_modes(tiny_davis_factory, mode):
    root = tiny_davis_factory("d16", year=2016)
    seq = DavisDataset(root, year=2016)["bear-run"]
    expected = seq.mask(1)
    gray = np.array(Image.open(seq.mask_paths[1]))
    if mode == "LA":
        image = Image.fromarray(np.stack([gray, np.full_like(gray, 255)], axis=-1), mode="LA")
        image.save(seq.mask_paths[1])
    else:
        write_indexed_png(seq.mask_paths[1], gray)
    assert Image.open(seq.mask_paths[1]).mode == mode
    np.testing.assert_array_equal(DavisDataset(root, year=2016)["bear-run"].mask(1), expected)


def test_any_resolution_folder_name(tiny_davis_factory):
    root = tiny_davis_factory("full", resolution="Full-Resolution")
    data = DavisDataset(root, resolution="Full-Resolution")
    assert len(data) == 3
    with pytest.raises(InputError, match="JPEGImages/480p"):
        DavisDataset(root)


def test_sequence_subset_and_close_matches(tiny_davis: Path):
    data = DavisDataset(tiny_davis, sequences=["dog-walk", "bear-run"])
    assert data.sequence_names == ["dog-walk", "bear-run"]
    with pytest.raises(InputError, match=r"unknown sequence 'dog-wlak'.*dog-walk"):
        DavisDataset(tiny_davis, sequences=["dog-wlak"])
    with pytest.raises(InputError, match="empty"):
        DavisDataset(tiny_davis, sequences=[])
    with pytest.raises(InputError, match="unknown sequence 'cat-jmp'.*cat-jump"):
        DavisDataset(tiny_davis)["cat-jmp"]


def test_subset_without_any_imageset_checks_folders(tiny_davis: Path):
    shutil.rmtree(tiny_davis / "ImageSets")
    data = DavisDataset(tiny_davis, sequences=["cat-jump"])
    assert data.sequence_names == ["cat-jump"]
    with pytest.raises(InputError, match="close matches: cat-jump"):
        DavisDataset(tiny_davis, sequences=["cat-jumps"])
    with pytest.raises(InputError, match=r"ImageSets/2017/val.txt.*not found"):
        DavisDataset(tiny_davis)


def test_year_mismatch_is_reported_not_switched(tiny_davis, tiny_davis_factory):
    root16 = tiny_davis_factory("d16", year=2016)
    with pytest.raises(
        InputError, match=r"ImageSets/2017/val.txt.*ImageSets/480p/val.txt.*year=2016"
    ):
        DavisDataset(root16, year=2017)
    with pytest.raises(
        InputError, match=r"ImageSets/480p/val.txt.*ImageSets/2017/val.txt.*year=2017"
    ):
        DavisDataset(tiny_davis, year=2016)
    with pytest.raises(InputError, match="test-dev"):
        DavisDataset(tiny_davis, split="test-dev")


def test_missing_folders_and_empty_lists(tiny_davis: Path, tmp_path: Path):
    with pytest.raises(InputError, match="DAVIS root folder not found"):
        DavisDataset(tmp_path / "nowhere")
    (tiny_davis / "ImageSets/2017/val.txt").write_text("\n\n")
    with pytest.raises(InputError, match=r"val.txt: the sequence list is empty"):
        DavisDataset(tiny_davis)
    shutil.rmtree(tiny_davis / "Annotations")
    with pytest.raises(InputError, match=r"Annotations/480p: folder not found"):
        DavisDataset(tiny_davis, sequences=["bear-run"])


def test_sequence_problems_name_the_file(tiny_davis: Path):
    frames = tiny_davis / "JPEGImages/480p/cat-jump"
    for path in frames.iterdir():
        path.unlink()
    with pytest.raises(
        InputError, match=r"JPEGImages/480p/cat-jump: sequence 'cat-jump' has no frames"
    ):
        DavisDataset(tiny_davis)
    shutil.rmtree(frames)
    with pytest.raises(InputError, match=r"cat-jump: no frame folder"):
        DavisDataset(tiny_davis)


def test_first_frame_must_be_annotated(tiny_davis: Path):
    (tiny_davis / "Annotations/480p/bear-run/00000.png").unlink()
    with pytest.raises(InputError, match=r"bear-run/00000.png: the first frame .* no annotation"):
        DavisDataset(tiny_davis)


def test_unannotated_frames(tiny_davis: Path):
    (tiny_davis / "Annotations/480p/bear-run/00004.png").unlink()
    seq = DavisDataset(tiny_davis)["bear-run"]
    assert seq.mask_paths[4] is None and not seq.has_mask(4)
    assert seq.annotated_indices == [0, 1, 2, 3, 5, 6, 7]
    assert seq.masks().shape == (7, 64, 96)
    with pytest.raises(InputError, match=r"bear-run/00004.png: .*no annotation"):
        seq.mask(4)
    with pytest.raises(InputError, match=r"bear-run/00004.png: annotation missing"):
        seq.masks(require_all=True)


def test_rgb_and_wrong_size_masks_are_rejected(tiny_davis: Path):
    seq = DavisDataset(tiny_davis)["bear-run"]
    Image.new("RGB", (96, 64)).save(seq.mask_paths[1])
    with pytest.raises(InputError, match=r"00001.png: .*mode 'RGB'"):
        seq.mask(1)
    write_indexed_png(seq.mask_paths[2], np.zeros((64, 95), dtype=np.uint8))
    with pytest.raises(
        InputError, match=r"00002.png: mask size 95x64 differs from the frame size 96x64"
    ):
        seq.mask(2)


def _write_results(root: Path, seq: DavisSequence, masks: np.ndarray) -> None:
    for name, ids in zip(seq.frame_names, masks):
        write_indexed_png(root / seq.name / f"{name}.png", ids)


def test_read_result_masks_roundtrip_and_errors(tiny_davis: Path, tmp_path: Path):
    seq = DavisDataset(tiny_davis)["cat-jump"]
    results = tmp_path / "results"
    masks = seq.masks()
    _write_results(results, seq, masks)
    np.testing.assert_array_equal(read_result_masks(results, seq), masks)
    np.testing.assert_array_equal(read_result_masks(results, seq, [2, 5]), masks[[2, 5]])

    with pytest.raises(InputError, match="results folder not found"):
        read_result_masks(tmp_path / "nope", seq)
    with pytest.raises(InputError, match=r"dog-walk: no results for sequence"):
        read_result_masks(results, DavisDataset(tiny_davis)["dog-walk"])
    (results / "cat-jump/00003.png").unlink()
    with pytest.raises(InputError, match=r"cat-jump/00003.png: result file missing"):
        read_result_masks(results, seq)
    Image.new("RGB", (96, 64)).save(results / "cat-jump/00003.png")
    with pytest.raises(InputError, match=r"00003.png: .*'RGB'"):
        read_result_masks(results, seq)
    write_indexed_png(results / "cat-jump/00003.png", np.zeros((32, 48), dtype=np.uint8))
    with pytest.raises(
        InputError, match=r"00003.png: result size 48x32 differs from the ground truth 96x64"
    ):
        read_result_masks(results, seq)


@requires_mini_davis
def test_real_davis2016_mini_set():
    data = DavisDataset(MINI_DAVIS, year=2016)
    assert len(data) == 8
    assert data.sequence_names[0] == "blackswan"
    total = 0
    for seq in data:
        assert seq.size == (480, 854)
        assert all(path is not None for path in seq.mask_paths)  # every frame annotated
        total += seq.num_frames
    assert total == 374
    seq = data["blackswan"]
    assert seq.object_ids() == [1]
    assert seq.frame(0).shape == (480, 854, 3)
    assert set(np.unique(seq.mask(10)).tolist()) == {0, 1}
    with pytest.raises(InputError, match="year=2016"):
        DavisDataset(MINI_DAVIS)
