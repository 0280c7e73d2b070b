"""CIS learns on synthetic video: the training tool on exact flow, scored on held-out sequences.

The videos have a moving camera (a pan plus some zoom and roll), so the flow magnitude alone does
not single out the objects; the test asserts that the trained generator does, and clearly better
than the magnitude threshold does. The settings are ``SYNTHETIC_CPU_RECIPE`` and
``SYNTHETIC_MOTION_SCENE`` (the demo's too; ``benchmarks/study_cis_synthetic.py`` runs the same
check over several seeds).
"""

from __future__ import annotations

from densessl.datasets.davis import DavisDataset
from densessl.tools.train_motion_vos import SYNTHETIC_CPU_RECIPE, SYNTHETIC_MOTION_SIZE, write_synthetic_motion_set
from densessl.tools.train_motion_vos import main as train_main
from densessl.video.motion_vos_eval import (
    MotionPredictConfig, baseline_predictor, evaluate_predictor, load_motion_vos, model_predictor,
)


def test_cis_learns_to_segment_moving_objects_on_held_out_videos(tmp_path):
    root, flows = tmp_path / "davis", tmp_path / "flows"
    write_synthetic_motion_set(root, flows, num_sequences=64 + 16, num_val=16, seed=0)
    args = [
        "--config", "configs/motion_vos.yaml", *SYNTHETIC_CPU_RECIPE,
        f"data.davis_root={root}", f"data.flow_root={flows}", "data.year=2017", "data.split=train",
        "train.progress=false", "train.log_every=100", f"train.out_dir={tmp_path / 'runs'}", "train.name=cis",
    ]
    assert train_main(args) == 0
    model = load_motion_vos(tmp_path / "runs" / "cis" / "checkpoints" / "motion_vos.pt")

    val = DavisDataset(root, year=2017, split="val")
    predict = MotionPredictConfig(size=SYNTHETIC_MOTION_SIZE, gaps=(1,))
    learned = evaluate_predictor(val, flows, model_predictor(model, predict, "cpu"), predict).global_row["J-Mean"]
    magnitude = evaluate_predictor(val, flows, baseline_predictor("flow-magnitude"), predict).global_row["J-Mean"]
    print(f"held-out J-Mean: CIS {learned:.3f}, flow magnitude {magnitude:.3f}")
    assert learned >= 0.6
    assert learned >= magnitude + 0.10
