"""The propagate / eval-davis tools and the dataset-level propagation, end to end."""

from __future__ import annotations

import csv

import numpy as np
from PIL import Image
import pytest
import torch

from densessl.cli import main as cli_main
from densessl.datasets.davis import DavisDataset, read_result_masks
from densessl.datasets.palette import read_id_png
from densessl.models.backbones import create_backbone
from densessl.tools.propagate import main as propagate_main
from densessl.video.davis_propagation import evaluate_backbone_on_davis, propagate_dataset, propagate_sequence
from densessl.video.propagation import make_config

from conftest import MINI_DAVIS, requires_mini_davis, tree_hash


def test_propagate_writes_official_pngs_and_leaves_dataset_alone(tiny_davis, tmp_path):
    before = tree_hash(tiny_davis)
    out = tmp_path / "out"
    code = propagate_main(["--backbone", "pixels-lab", "--davis-root", str(tiny_davis),
                           "--out", str(out), "--overlays", "--device", "cpu"])
    assert code == 0
    assert tree_hash(tiny_davis) == before
    dataset = DavisDataset(tiny_davis)
    for sequence in dataset:
        masks = read_result_masks(out, sequence)
        assert masks.shape == (sequence.num_frames, *sequence.size)
        assert np.array_equal(masks[0], sequence.first_mask() * (sequence.first_mask() != 255))
        assert set(np.unique(masks)) <= {0, *sequence.object_ids()}
        assert (out / "overlays" / f"{sequence.name}.png").is_file()
        with Image.open(out / "overlays" / "features" / f"{sequence.name}.png") as features:
            height, width = sequence.size  # five frames side by side
            assert features.size == (5 * width, height) and features.mode == "RGB"
    assert (out / "settings.json").is_file()


def test_eval_davis_scores_and_writes_csvs(tiny_davis, tmp_path, capsys):
    out = tmp_path / "eval"
    code = cli_main(["eval-davis", "--backbone", "pixels-lab", "--davis-root", str(tiny_davis),
                     "--out", str(out), "--device", "cpu", "--topk", "5"])
    assert code == 0
    with open(out / "global_results-val.csv") as handle:
        row = next(csv.DictReader(handle))
    assert 0.3 < float(row["J&F-Mean"]) <= 1.0  # colour baseline on easy ellipses
    with open(out / "per-sequence_results-val.csv") as handle:
        names = [r["Sequence"] for r in csv.DictReader(handle)]
    assert names == ["bear-run_1", "cat-jump_1", "cat-jump_2", "dog-walk_1", "dog-walk_2",
                     "dog-walk_3"]
    assert "J&F-Mean" in capsys.readouterr().out


def test_further_protocols_reuse_the_features_and_match_separate_runs(tiny_davis, tmp_path):
    """propagate_dataset(also=...): one backbone pass per frame, the same PNGs as a separate run."""
    dataset = DavisDataset(tiny_davis)
    backbone = create_backbone("pixels-lab")
    frames_seen = []
    features = backbone.features
    backbone.features = lambda x: (frames_seen.append(x.shape[0]), features(x))[1]
    crw, first_only = make_config("crw"), make_config("crw", num_recent=0)
    propagate_dataset(backbone, dataset, tmp_path / "both", crw, device="cpu", progress=False,
                      also=[(first_only, tmp_path / "both_first")])
    total_frames = sum(sequence.num_frames for sequence in dataset)
    assert sum(frames_seen) == total_frames
    propagate_dataset(backbone, dataset, tmp_path / "alone", crw, device="cpu", progress=False)
    propagate_dataset(backbone, dataset, tmp_path / "alone_first", first_only, device="cpu", progress=False)
    assert sum(frames_seen) == 3 * total_frames
    differ = False
    for sequence in dataset:
        shared = read_result_masks(tmp_path / "both_first", sequence)
        assert np.array_equal(shared, read_result_masks(tmp_path / "alone_first", sequence))
        assert np.array_equal(read_result_masks(tmp_path / "both", sequence),
                              read_result_masks(tmp_path / "alone", sequence))
        differ |= not np.array_equal(shared, read_result_masks(tmp_path / "alone", sequence))
    assert differ  # the two protocols are not the same propagation


def test_further_protocols_of_another_size_get_their_own_features(tiny_davis, tmp_path):
    """A protocol of another processing size in ``also``: one extra pass at its own size, and the
    PNGs of a separate run (never features of the wrong size)."""
    dataset = DavisDataset(tiny_davis)
    backbone = create_backbone("pixels-lab")
    passes: list[tuple[int, ...]] = []
    features = backbone.features
    backbone.features = lambda x: (passes.append(tuple(x.shape)), features(x))[1]
    native, first_only = make_config("crw"), make_config("crw", num_recent=0)
    resized = make_config("crw", short_side=32)
    propagate_dataset(backbone, dataset, tmp_path / "native", native, device="cpu", progress=False,
                      also=[(resized, tmp_path / "resized"), (first_only, tmp_path / "first")])
    sizes = {shape[-2:] for shape in passes}
    assert sum(shape[0] for shape in passes) == 2 * sum(s.num_frames for s in dataset)
    assert any(min(size) == 32 for size in sizes) and any(min(size) > 32 for size in sizes)
    propagate_dataset(backbone, dataset, tmp_path / "resized_alone", resized, device="cpu",
                      progress=False)
    propagate_dataset(backbone, dataset, tmp_path / "first_alone", first_only, device="cpu",
                      progress=False)
    for sequence in dataset:
        for shared, alone in (("resized", "resized_alone"), ("first", "first_alone")):
            assert np.array_equal(read_result_masks(tmp_path / shared, sequence),
                                  read_result_masks(tmp_path / alone, sequence))


def test_a_feature_store_never_serves_features_of_another_processing_size(tiny_davis):
    sequence = DavisDataset(tiny_davis)[0]
    backbone = create_backbone("pixels-lab")
    store: dict = {}
    native, resized = make_config("crw"), make_config("crw", short_side=32)
    propagate_sequence(backbone, sequence, native, device=torch.device("cpu"), feature_store=store)
    shared = propagate_sequence(backbone, sequence, resized, device=torch.device("cpu"), feature_store=store)
    alone = propagate_sequence(backbone, sequence, resized, device=torch.device("cpu"))
    assert np.array_equal(shared.masks, alone.masks)
    assert len(store) == 2 and all(len(features) == sequence.num_frames for features in store.values())


def test_propagation_beats_copying_the_first_mask(tiny_davis):
    """Moving objects: following them must score better than repeating frame 0."""
    dataset = DavisDataset(tiny_davis)
    backbone = create_backbone("pixels-lab")
    from densessl.eval.davis_metrics import DavisScores, evaluate_sequence_masks

    ours, copied = [], []
    for sequence in dataset:
        result = propagate_sequence(backbone, sequence, make_config("crw"),
                                    device=torch.device("cpu"))
        gt = sequence.masks()
        still = np.repeat(result.masks[:1], sequence.num_frames, axis=0)
        ours += evaluate_sequence_masks(gt, result.masks, sequence=sequence.name)
        copied += evaluate_sequence_masks(gt, still, sequence=sequence.name)
    assert DavisScores(ours).jf_mean > DavisScores(copied).jf_mean + 0.05


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--backbone", "resnet18-crv"], "resnet18-crw"),
        (["--backbone", "pixels-lab", "--opt", "nonsense=1"], "nonsense"),
        (["--backbone", "pixels-lab", "--sequences", "no-such-seq"], "no-such-seq"),
        (["--backbone", "pixels-lab", "--weights", "/nonexistent/w.pth"], "w.pth"),
    ],
)
def test_bad_input_exits_2_with_a_named_error(tiny_davis, tmp_path, capsys, argv, message):
    code = propagate_main([*argv, "--davis-root", str(tiny_davis), "--out", str(tmp_path / "o"),
                           "--device", "cpu"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error:") and message in err[-1]


def test_refuses_output_inside_dataset_or_non_empty(tiny_davis, tmp_path, capsys):
    code = propagate_main(["--backbone", "pixels-lab", "--davis-root", str(tiny_davis),
                           "--out", str(tiny_davis / "results")])
    assert code == 2 and "inside the dataset" in capsys.readouterr().err
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    code = propagate_main(["--backbone", "pixels-lab", "--davis-root", str(tiny_davis),
                           "--out", str(taken)])
    assert code == 2 and "--overwrite" in capsys.readouterr().err
    assert (taken / "keep.txt").read_text() == "mine"


def test_dino_protocol_runs_with_a_vit(tiny_davis_factory):
    root = tiny_davis_factory("vit", sequences=(("one", 1),), size=(48, 80), num_frames=5)
    torch.manual_seed(0)
    vit = create_backbone("vit_tiny_patch16_224")
    scores = evaluate_backbone_on_davis(vit, root, protocol="dino", device="cpu",
                                        short_side=48, long_side_multiple=16)
    assert 0.0 <= scores["J&F-Mean"] <= 1.0


@requires_mini_davis
@pytest.mark.slow
def test_real_sequence_with_the_colour_baseline(tmp_path):
    """One real DAVIS-2016 sequence, cut to its first 6 frames: the baseline must follow it."""
    dataset = DavisDataset(MINI_DAVIS, year=2016, sequences=["blackswan"])
    sequence = dataset["blackswan"]
    sequence.frame_paths = sequence.frame_paths[:6]
    sequence.mask_paths = sequence.mask_paths[:6]
    result = propagate_sequence(create_backbone("pixels-lab"), sequence, make_config("crw"),
                                device=torch.device("cpu"), out_dir=tmp_path)
    gt = np.stack([sequence.mask(i) for i in range(6)])
    iou = (((result.masks > 0) & (gt > 0)).sum() / ((result.masks > 0) | (gt > 0)).sum())
    assert iou > 0.7
    assert read_id_png(tmp_path / "blackswan" / "00005.png").shape == (480, 854)
