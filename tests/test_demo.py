"""The demo end to end at a tiny size, run from a relative output folder as `make demo` does."""

from __future__ import annotations

import json

from densessl.tools.demo import main


def test_demo_writes_table_chart_and_overlays(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["--out", "demo", "--sequences", "6", "--frames", "8", "--height", "64",
            "--width", "96", "--train-minutes", "0.05", "--motion-sequences", "5", "--motion-steps", "8",
            "--device", "cpu"]
    assert main(argv) == 0
    demo = tmp_path / "demo"
    results = json.loads((demo / "results.json").read_text())
    propagation, motion = results["propagation"], results["motion_segmentation"]
    assert set(propagation) == {"pixels-lab", "resnet18-crw layer3 (random init)",
                                "resnet18-crw layer2 (random init)",
                                "resnet18-crw layer2 (CRW-trained)"}
    assert all(0.0 <= row["J&F-Mean"] <= 1.0 and 0.0 <= row["J&F frame 0 only"] <= 1.0
               for row in propagation.values())
    assert (demo / "pixels-lab" / "first_frame_only" / "global_results-val.csv").is_file()
    assert set(motion) == {"CIS (trained)", "flow magnitude", "camera-compensated"}
    assert all(0.0 <= row["J-Mean"] <= 1.0 for row in motion.values())
    for chart in ("jf_by_method.png", "motion_j_by_method.png"):
        assert (demo / chart).stat().st_size > 0
    assert list((demo / "pixels-lab" / "overlays").glob("*.png"))
    assert list((demo / "motion" / "CIS__trained" / "overlays").glob("*.png"))
    assert (demo / "motion" / "cis_run" / "checkpoints" / "motion_vos.pt").is_file()
    report = (demo / "results.md").read_text()
    assert "## Motion segmentation" in report and "| CIS (trained) |" in report
    assert "J&F frame 0 only |" in report
    assert "| method |" in capsys.readouterr().out
    # a second run refuses to replace the folder without --overwrite
    assert main(argv) == 2


def test_demo_refuses_a_motion_set_without_val(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "demo"), "--motion-sequences", "1"]) == 2
    assert "--motion-sequences" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()
