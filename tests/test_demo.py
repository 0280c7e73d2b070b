"""The demo end to end at a tiny size, run from a relative output folder as `make demo` does."""

from __future__ import annotations

import json

from densessl.tools.demo import main


def test_demo_writes_table_chart_and_overlays(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["--out", "demo", "--sequences", "6", "--frames", "8", "--height", "64",
            "--width", "96", "--train-minutes", "0.05", "--device", "cpu"]
    assert main(argv) == 0
    results = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert set(results) == {"pixels-lab", "resnet18-crw layer3 (random init)",
                            "resnet18-crw layer2 (random init)",
                            "resnet18-crw layer2 (CRW-trained)"}
    assert all(0.0 <= row["J&F-Mean"] <= 1.0 for row in results.values())
    assert (tmp_path / "demo" / "jf_by_method.png").stat().st_size > 0
    assert list((tmp_path / "demo" / "pixels-lab" / "overlays").glob("*.png"))
    assert "| method |" in capsys.readouterr().out
    # a second run refuses to replace the folder without --overwrite
    assert main(argv) == 2
