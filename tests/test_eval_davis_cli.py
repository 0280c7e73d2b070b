"""``tools/eval_davis.py``: official CSVs, recomputation, errors, and the real mini set."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import MINI_DAVIS, TINY_SEQUENCES, requires_mini_davis, tree_hash
from PIL import Image

from densessl.datasets.davis import DavisDataset, write_indexed_png
from densessl.errors import InputError
from densessl.eval.davis_metrics import (
    GLOBAL_COLUMNS,
    DavisScores,
    evaluate_results,
    evaluate_sequence_masks,
)
from densessl.tools.eval_davis import main

REPO = Path(__file__).resolve().parents[1]
OBJECT_ROWS = [f"{name}_{k}" for name, n in TINY_SEQUENCES for k in range(1, n + 1)]


def write_predictions(davis: Path, results: Path, *, noise: float = 0.0, seed: int = 0) -> dict:
    """GT (void -> background) as predictions, optionally with pixels flipped to other ids."""
    rng = np.random.default_rng(seed)
    written = {}
    for seq in DavisDataset(davis):
        gt = seq.masks()
        pred = np.where(gt == 255, 0, gt)
        if noise:
            num_objects = len(seq.object_ids())
            flip = rng.random(pred.shape) < noise
            pred = np.where(flip, rng.integers(0, num_objects + 1, pred.shape), pred).astype(
                np.uint8
            )
        for name, ids in zip(seq.frame_names, pred):
            write_indexed_png(results / seq.name / f"{name}.png", ids)
        written[seq.name] = (gt, pred)
    return written


def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_gt_as_prediction_scores_one_and_writes_official_csvs(tiny_davis, tmp_path, capsys):
    results = tmp_path / "results"
    write_predictions(tiny_davis, results)
    before = tree_hash(tiny_davis)
    code, out, _ = run_cli(
        ["--davis-root", tiny_davis, "--results", results, "--workers", 1], capsys
    )
    assert code == 0
    assert tree_hash(tiny_davis) == before
    rows = read_csv(results / "global_results-val.csv")
    assert rows[0] == list(GLOBAL_COLUMNS)
    assert rows[1] == ["1.000", "1.000", "1.000", "0.000", "1.000", "1.000", "0.000"]
    per = read_csv(results / "per-sequence_results-val.csv")
    assert per[0] == ["Sequence", "J-Mean", "F-Mean"]
    assert [row[0] for row in per[1:]] == OBJECT_ROWS
    assert all(row[1:] == ["1.000", "1.000"] for row in per[1:])
    assert "J&F-Mean" in out and "dog-walk_3" in out


def test_csv_numbers_match_the_in_memory_scorer_and_reruns_recompute(tiny_davis, tmp_path, capsys):
    results = tmp_path / "results"
    written = write_predictions(tiny_davis, results, noise=0.08, seed=1)
    code, _, _ = run_cli(["--davis-root", tiny_davis, "--results", results, "--workers", 1], capsys)
    assert code == 0
    objects = []
    for name, (gt, pred) in written.items():
        objects += evaluate_sequence_masks(gt, pred, sequence=name)
    expected = DavisScores(objects).global_row
    rows = read_csv(results / "global_results-val.csv")
    assert rows[1] == [format(expected[c], ".3f") for c in GLOBAL_COLUMNS]
    assert expected["J&F-Mean"] < 0.95
    per = read_csv(results / "per-sequence_results-val.csv")
    assert [row[0] for row in per[1:]] == OBJECT_ROWS
    assert [row[1] for row in per[1:]] == [format(o.j_mean, ".3f") for o in objects]
    assert [row[2] for row in per[1:]] == [format(o.f_mean, ".3f") for o in objects]

    # Damage one result frame: a re-run must recompute, not print cached CSVs.
    gt, _ = written["bear-run"]
    write_indexed_png(results / "bear-run/00003.png", np.zeros_like(gt[3]))
    code, _, _ = run_cli(["--davis-root", tiny_davis, "--results", results, "--workers", 1], capsys)
    assert code == 0
    per_after = read_csv(results / "per-sequence_results-val.csv")
    assert float(per_after[1][1]) < float(per[1][1])
    assert per_after[2:] == per[2:]


def test_process_pool_gives_the_same_scores(tiny_davis, tmp_path):
    results = tmp_path / "results"
    write_predictions(tiny_davis, results, noise=0.05, seed=2)
    one = evaluate_results(tiny_davis, results, num_workers=1)
    two = evaluate_results(tiny_davis, results, num_workers=2)
    assert one.global_row == two.global_row
    assert [o.name for o in one.objects] == [o.name for o in two.objects] == OBJECT_ROWS
    missing = results / "dog-walk/00002.png"
    missing.unlink()
    with pytest.raises(InputError, match=f"{missing}: result file missing"):
        evaluate_results(tiny_davis, results, num_workers=2)  # raised in a worker process


def test_csvs_can_go_elsewhere_and_2016_layout(tiny_davis_factory, tmp_path, capsys):
    root = tiny_davis_factory("d16", year=2016)
    results = tmp_path / "results16"
    for seq in DavisDataset(root, year=2016):
        for name, mask_path in zip(seq.frame_names, seq.mask_paths):
            (results / seq.name).mkdir(parents=True, exist_ok=True)
            Image.open(mask_path).save(results / seq.name / f"{name}.png")  # 0/255 as given
    out_dir = tmp_path / "csv"
    code, _, _ = run_cli(
        [
            "--davis-root",
            root,
            "--results",
            results,
            "--year",
            2016,
            "--out",
            out_dir,
            "--workers",
            1,
        ],
        capsys,
    )
    assert code == 0
    assert read_csv(out_dir / "global_results-val.csv")[1][0] == "1.000"
    assert [r[0] for r in read_csv(out_dir / "per-sequence_results-val.csv")[1:]] == [
        f"{name}_1" for name, _ in TINY_SEQUENCES
    ]
    assert not (results / "global_results-val.csv").exists()
    code, _, _ = run_cli(
        [
            "--davis-root",
            root,
            "--results",
            results,
            "--year",
            2016,
            "--task",
            "unsupervised",
            "--workers",
            1,
        ],
        capsys,
    )
    assert code == 0
    assert read_csv(results / "global_results-val.csv")[1][0] == "1.000"


def _expect_error(capsys, args: list, *fragments: str) -> None:
    code, out, err = run_cli(args, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0]


def test_bad_input_exits_2_with_one_line_naming_the_file(tiny_davis, tmp_path, capsys):
    results = tmp_path / "results"
    write_predictions(tiny_davis, results)
    before = tree_hash(tiny_davis)
    base = ["--davis-root", tiny_davis, "--results", results, "--workers", 1]

    missing = results / "cat-jump/00004.png"
    missing.unlink()
    _expect_error(capsys, base, str(missing), "result file missing")
    write_indexed_png(missing, np.zeros((64, 90), dtype=np.uint8))
    _expect_error(capsys, base, str(missing), "result size 90x64 differs")
    Image.new("RGB", (96, 64)).save(missing)
    _expect_error(capsys, base, str(missing), "'RGB'")
    ids = np.zeros((64, 96), dtype=np.uint8)
    ids[10, 10] = 3  # cat-jump has 2 objects
    write_indexed_png(missing, ids)
    _expect_error(capsys, base, str(missing), "predicted id 3", "(2)")

    _expect_error(
        capsys, base + ["--sequences", "bear-rnu"], "unknown sequence 'bear-rnu'", "bear-run"
    )
    _expect_error(capsys, base + ["--sequences", ""], "sequence list is empty")
    _expect_error(
        capsys,
        ["--davis-root", tiny_davis, "--results", tmp_path / "none"],
        str(tmp_path / "none"),
        "results folder not found",
    )
    _expect_error(capsys, base + ["--year", 2016], "ImageSets/480p/val.txt", "year=2017")
    assert tree_hash(tiny_davis) == before

    # an empty sequence list file (on a copy: the dataset itself is never written)
    (tiny_davis / "ImageSets/2017/empty.txt").write_text("")
    _expect_error(capsys, base + ["--set", "empty"], "empty.txt", "sequence list is empty")


def test_script_shim_exit_code_and_stderr(tiny_davis, tmp_path):
    script = REPO / "tools" / "eval_davis.py"
    proc = subprocess.run(
        [
            sys.executable,
            str(script),
            "--davis-root",
            str(tiny_davis),
            "--results",
            str(tmp_path / "x"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'x'}: results folder not found"
    ]


@pytest.mark.slow
@requires_mini_davis
def test_real_mini_set_gt_scores_one_and_eroded_scores_less(tmp_path, capsys):
    before = tree_hash(MINI_DAVIS)
    gt_results, eroded = tmp_path / "gt", tmp_path / "eroded"
    kernel = np.ones((5, 5), np.uint8)
    for seq_dir in sorted((MINI_DAVIS / "Annotations/480p").iterdir()):
        for png in sorted(seq_dir.glob("*.png")):
            mask = np.array(Image.open(png).convert("L"))
            for folder, ids in (
                (gt_results, mask),
                (eroded, cv2.erode(mask, kernel, iterations=2)),
            ):
                (folder / seq_dir.name).mkdir(parents=True, exist_ok=True)
                Image.fromarray(ids, mode="L").save(
                    folder / seq_dir.name / png.name, compress_level=1
                )
    exact = evaluate_results(MINI_DAVIS, gt_results, year=2016, num_workers=2)
    assert len(exact.objects) == 8
    assert all(
        value == (0.0 if "Decay" in column else 1.0) for column, value in exact.global_row.items()
    )

    args = ["--davis-root", MINI_DAVIS, "--year", "2016", "--workers", 2, "--results", eroded]
    assert run_cli(args, capsys)[0] == 0
    row = dict(zip(GLOBAL_COLUMNS, map(float, read_csv(eroded / "global_results-val.csv")[1])))
    print(f"\nmini set, eroded GT (5x5, 2 iterations): {row}")
    assert 0.5 < row["J&F-Mean"] < 1.0
    assert row["J-Mean"] < 1.0 and row["F-Mean"] < 1.0
    assert tree_hash(MINI_DAVIS) == before
