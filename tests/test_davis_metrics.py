"""The DAVIS scorer against a deliberately naive, independent reference written here.

The reference follows the published definitions and the official toolkit's rules with plain
Python loops: per-pixel boundary maps (east / south / south-east neighbours, the last row and
column handled as ``seg2bmap`` does), a disk built point by point, dilation by painting disks,
and the official per-object statistics and global aggregation written out longhand.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from densessl.errors import InputError
from densessl.eval.davis_metrics import (
    GLOBAL_COLUMNS,
    DavisScores,
    boundary_map,
    boundary_radius,
    db_eval_iou,
    db_statistics,
    disk_kernel,
    evaluate_sequence_masks,
    f_measure,
)

# ----------------------------------------------------------------------------- naive reference


def naive_boundary(mask: np.ndarray) -> np.ndarray:
    height, width = mask.shape
    out = np.zeros((height, width), dtype=bool)
    for y in range(height):
        for x in range(width):
            here = bool(mask[y, x])
            if y < height - 1 and x < width - 1:
                neighbours = [mask[y, x + 1], mask[y + 1, x], mask[y + 1, x + 1]]
            elif y == height - 1 and x < width - 1:
                neighbours = [mask[y, x + 1]]  # last row: east only
            elif x == width - 1 and y < height - 1:
                neighbours = [mask[y + 1, x]]  # last column: south only
            else:
                neighbours = []  # bottom-right corner: never a boundary
            out[y, x] = any(bool(n) != here for n in neighbours)
    return out


def naive_radius(height: int, width: int, bound_th: float) -> int:
    if bound_th >= 1:
        return int(bound_th)
    return math.ceil(bound_th * math.sqrt(height * height + width * width))


def naive_disk(radius: int) -> list[tuple[int, int]]:
    offsets = []
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if dy * dy + dx * dx <= radius * radius:
                offsets.append((dy, dx))
    return offsets


def naive_dilate(boundary: np.ndarray, radius: int) -> np.ndarray:
    height, width = boundary.shape
    out = np.zeros_like(boundary)
    disk = naive_disk(radius)
    for y in range(height):
        for x in range(width):
            if boundary[y, x]:
                for dy, dx in disk:
                    if 0 <= y + dy < height and 0 <= x + dx < width:
                        out[y + dy, x + dx] = True
    return out


def naive_j(gt: np.ndarray, pred: np.ndarray) -> float:
    inter = union = 0
    for g, p in zip(gt.ravel().tolist(), pred.ravel().tolist()):
        inter += bool(g) and bool(p)
        union += bool(g) or bool(p)
    return 1.0 if union == 0 else inter / union


def naive_f(gt: np.ndarray, pred: np.ndarray, bound_th: float = 0.008) -> float:
    gt_b, pred_b = naive_boundary(gt), naive_boundary(pred)
    n_gt, n_pred = int(gt_b.sum()), int(pred_b.sum())
    if n_pred == 0 and n_gt > 0:
        precision, recall = 1.0, 0.0
    elif n_pred > 0 and n_gt == 0:
        precision, recall = 0.0, 1.0
    elif n_pred == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    else:
        radius = naive_radius(*gt.shape, bound_th)
        gt_dil, pred_dil = naive_dilate(gt_b, radius), naive_dilate(pred_b, radius)
        precision = sum(1 for v in (pred_b & gt_dil).ravel() if v) / n_pred
        recall = sum(1 for v in (gt_b & pred_dil).ravel() if v) / n_gt
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def naive_mean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def naive_stats(values: list[float]) -> tuple[float, float, float]:
    n = len(values)
    mean = naive_mean(values)
    recall = sum(1 for v in values if v > 0.5) / n
    ids = [round(1 + i * (n - 1) / 4 + 1e-10) - 1 for i in range(5)]  # plain integers
    first = values[ids[0] : ids[1] + 1]
    last = values[ids[3] : ids[4] + 1]
    return mean, recall, naive_mean(first) - naive_mean(last)


def naive_sequence(gt: np.ndarray, pred: np.ndarray, name: str, bound_th: float = 0.008):
    """Official DAVIS-2017 semi-supervised rules: rows (name, J stats, F stats) per object."""
    first = [int(v) for v in gt[0].ravel() if v != 255]
    num_objects = max(first) if first else 0
    rows = []
    for k in range(1, num_objects + 1):
        js, fs = [], []
        for t in range(1, len(gt) - 1):
            g = (gt[t] == k) & (gt[t] != 255)
            p = pred[t] == k
            js.append(naive_j(g, p))
            fs.append(naive_f(g, p, bound_th))
        rows.append((f"{name}_{k}", naive_stats(js), naive_stats(fs)))
    return rows


def naive_global(rows) -> dict[str, float]:
    def avg(values):
        return sum(values) / len(values)

    j_mean = avg([r[1][0] for r in rows])
    f_mean = avg([r[2][0] for r in rows])
    return {
        "J&F-Mean": (j_mean + f_mean) / 2,
        "J-Mean": j_mean,
        "J-Recall": avg([r[1][1] for r in rows]),
        "J-Decay": avg([r[1][2] for r in rows]),
        "F-Mean": f_mean,
        "F-Recall": avg([r[2][1] for r in rows]),
        "F-Decay": avg([r[2][2] for r in rows]),
    }


# ----------------------------------------------------------------------------- mask generators


def random_mask(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Random and adversarial binary masks: empty, full, single pixels (corners included),
    noise, border-touching rectangles, ellipses, thin lines, last row / column only."""
    kind = rng.integers(0, 11)
    mask = np.zeros((height, width), dtype=bool)
    yy, xx = np.mgrid[:height, :width]
    if kind == 0:
        pass
    elif kind == 1:
        mask[:] = True
    elif kind == 2:
        corners = [(0, 0), (0, width - 1), (height - 1, 0), (height - 1, width - 1)]
        y, x = (
            corners[rng.integers(4)]
            if rng.random() < 0.5
            else (rng.integers(height), rng.integers(width))
        )
        mask[y, x] = True
    elif kind == 3:
        mask = rng.random((height, width)) < rng.choice([0.05, 0.3, 0.5, 0.9])
    elif kind == 4:
        y0, x0 = rng.integers(0, height), rng.integers(0, width)
        y1, x1 = rng.integers(y0, height + 1), rng.integers(x0, width + 1)
        mask[y0 : max(y1, y0 + 1), x0 : max(x1, x0 + 1)] = True
        if rng.random() < 0.5:  # touch a border
            mask[:, : max(1, width // 4)] |= rng.random() < 0.5
            mask[-1, :] |= True
    elif kind == 5:
        cy, cx = rng.uniform(-2, height + 2), rng.uniform(-2, width + 2)
        ry, rx = rng.uniform(1, height), rng.uniform(1, width)
        mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    elif kind == 6:
        mask[rng.integers(height), :] = True
        mask[:, rng.integers(width)] = True
    elif kind == 7:
        mask[-1, :] = True
    elif kind == 8:
        mask[:, -1] = True
    elif kind == 9:
        mask = (yy + xx) % 2 == 0
    else:
        mask[:] = True
        mask[rng.integers(height), rng.integers(width)] = False
    return mask


def perturb(rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    """A prediction near ``mask``: shifted, noisy, emptied or unrelated."""
    choice = rng.integers(0, 5)
    if choice == 0:
        return np.roll(mask, (rng.integers(-3, 4), rng.integers(-3, 4)), axis=(0, 1))
    if choice == 1:
        return mask ^ (rng.random(mask.shape) < 0.05)
    if choice == 2:
        return mask.copy()
    return random_mask(rng, *mask.shape)


SHAPES = [(24, 31), (1, 7), (7, 1), (1, 1), (2, 2), (13, 5), (5, 13)]


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("shape", SHAPES)
def test_boundary_map_matches_naive(shape):
    rng = np.random.default_rng(hash(shape) % 2**32)
    masks = np.stack([random_mask(rng, *shape) for _ in range(40)])
    fast = boundary_map(masks)  # vectorised over the stack
    for mask, got in zip(masks, fast):
        np.testing.assert_array_equal(got, naive_boundary(mask))


def test_boundary_map_special_rows():
    # Only the east neighbour counts on the last row, only the south one on the last column.
    mask = np.zeros((4, 5), dtype=bool)
    mask[3, 2] = True  # on the last row
    b = boundary_map(mask)
    assert b[3, 1] and b[3, 2]  # east comparisons along the last row
    assert b[2, 1] and b[2, 2]  # south / south-east from the row above
    assert not b[3, 3]
    full = np.ones((6, 7), dtype=bool)
    assert not boundary_map(full).any()  # a full-frame mask has no boundary pixels
    corner = np.zeros((3, 3), dtype=bool)
    corner[2, 2] = True
    assert not boundary_map(corner)[2, 2]


@pytest.mark.parametrize("radius", list(range(0, 11)))
def test_disk_kernel_matches_naive(radius):
    kernel = disk_kernel(radius)
    assert kernel.shape == (2 * radius + 1, 2 * radius + 1)
    expected = np.zeros_like(kernel)
    for dy, dx in naive_disk(radius):
        expected[dy + radius, dx + radius] = 1
    np.testing.assert_array_equal(kernel, expected)


def test_radius_at_480p_is_8_with_a_17x17_disk():
    assert boundary_radius(480, 854) == naive_radius(480, 854, 0.008) == 8
    assert disk_kernel(boundary_radius(480, 854)).shape == (17, 17)
    for height, width in [(24, 31), (1, 1), (64, 96), (1080, 1920), (720, 1280)]:
        for th in (0.008, 0.05, 0.1, 2.0, 5.0):
            assert boundary_radius(height, width, th) == naive_radius(height, width, th)


@pytest.mark.parametrize("bound_th", [0.008, 0.1, 3.0])
@pytest.mark.parametrize("shape", SHAPES)
def test_j_and_f_match_naive_on_random_and_adversarial_pairs(shape, bound_th):
    rng = np.random.default_rng([shape[0], shape[1], int(bound_th * 1000)])
    gts, preds = [], []
    for _ in range(30):
        gt = random_mask(rng, *shape)
        gts.append(gt)
        preds.append(perturb(rng, gt))
    gts, preds = np.stack(gts), np.stack(preds)
    j = db_eval_iou(gts, preds)
    f = f_measure(gts, preds, bound_th)
    assert j.shape == f.shape == (len(gts),)
    for t in range(len(gts)):
        assert j[t] == pytest.approx(naive_j(gts[t], preds[t]), abs=1e-12)
        assert f[t] == pytest.approx(naive_f(gts[t], preds[t], bound_th), abs=1e-12)
        # single-frame call gives the same numbers
        assert float(f_measure(gts[t], preds[t], bound_th)) == f[t]


def test_f_matches_naive_with_the_480p_radius():
    # 60×80 with an 8-pixel tolerance: the 17×17 disk used at 480p.
    rng = np.random.default_rng(7)
    for _ in range(12):
        gt = random_mask(rng, 60, 80)
        pred = perturb(rng, gt)
        assert float(f_measure(gt, pred, 8.0)) == pytest.approx(naive_f(gt, pred, 8.0), abs=1e-12)


def test_empty_and_full_rules():
    empty = np.zeros((9, 11), dtype=bool)
    full = np.ones((9, 11), dtype=bool)
    blob = empty.copy()
    blob[3:6, 4:8] = True
    assert float(db_eval_iou(empty, empty)) == 1.0
    assert float(f_measure(empty, empty)) == 1.0
    assert float(db_eval_iou(empty, blob)) == 0.0
    assert float(f_measure(empty, blob)) == 0.0  # GT empty, prediction not
    assert float(f_measure(blob, empty)) == 0.0  # prediction empty, GT not
    assert float(f_measure(full, full)) == 1.0  # no boundary pixels on either side
    assert float(f_measure(blob, blob)) == 1.0
    assert float(db_eval_iou(blob, blob)) == 1.0


def test_statistics_match_naive_including_nan():
    rng = np.random.default_rng(3)
    for n in list(range(1, 40)) + [97, 255, 256, 257, 300, 513]:
        values = rng.random(n).tolist()
        if n > 3:
            values[int(rng.integers(n))] = math.nan
        got = db_statistics(values)
        want = naive_stats(values)
        for a, b in zip(got, want):
            assert a == pytest.approx(b, abs=1e-12, nan_ok=True)


def test_decay_beyond_255_frames_uses_plain_integers():
    # 302 tiny frames: 300 scored. The official uint8 cast would wrap the bin indices.
    rng = np.random.default_rng(11)
    num_frames = 302
    gt = np.zeros((num_frames, 6, 7), dtype=np.uint8)
    gt[:, 1:5, 1:6] = 1
    pred = np.zeros_like(gt)
    for t in range(num_frames):  # quality decays over time
        pred[t] = np.where(rng.random((6, 7)) < 0.1 + 0.8 * t / num_frames, 1 - gt[t], gt[t])
    (obj,) = evaluate_sequence_masks(gt, pred, sequence="long")
    j_naive = [naive_j(gt[t] == 1, pred[t] == 1) for t in range(1, num_frames - 1)]
    f_naive = [naive_f(gt[t] == 1, pred[t] == 1) for t in range(1, num_frames - 1)]
    assert obj.j_decay == pytest.approx(naive_stats(j_naive)[2], abs=1e-12)
    assert obj.f_decay == pytest.approx(naive_stats(f_naive)[2], abs=1e-12)
    assert obj.j_decay > 0.2
    # The wrapped (uint8) indices give a different decay here (an empty last bin: NaN).
    n = len(j_naive)
    wrapped = (np.round(np.linspace(1, n, 5) + 1e-10) - 1).astype(np.int64) % 256
    x = np.asarray(j_naive)
    last = x[wrapped[3] : wrapped[4] + 1]
    wrong = np.mean(x[wrapped[0] : wrapped[1] + 1]) - (np.mean(last) if last.size else math.nan)
    assert not np.isclose(wrong, obj.j_decay)


def _random_sequence(rng: np.random.Generator, shape: tuple[int, int]):
    """GT ``T×H×W`` ids with void, absent objects and a non-contiguous first frame; a
    prediction with ids up to the first frame's maximum (sometimes missing an object)."""
    num_frames = int(rng.integers(3, 12))
    num_objects = int(rng.integers(1, 4))
    gt = np.zeros((num_frames, *shape), dtype=np.uint8)
    for t in range(num_frames):
        for k in range(1, num_objects + 1):
            if t > 0 and rng.random() < 0.2:
                continue  # object absent in this frame
            gt[t][random_mask(rng, *shape) & (rng.random(shape) < 0.9)] = k
        gt[t][rng.random(shape) < 0.03] = 255  # void
    if num_objects >= 2 and rng.random() < 0.3:
        gt[0][gt[0] == 1] = 0  # first frame without id 1: still scored (ids 1..max)
    if rng.random() < 0.2:
        gt[-2][rng.random(shape) < 0.1] = num_objects + 1  # a later id: not scored
    first = gt[0][gt[0] != 255]
    top = int(first.max()) if first.size else 0
    pred = np.zeros_like(gt)
    for t in range(num_frames):
        for k in range(1, top + 1):
            pred[t][perturb(rng, gt[t] == k)] = k
    if top >= 2 and rng.random() < 0.3:
        pred[pred == top] = 0  # prediction never uses its largest id
    return gt, pred


def test_global_columns_match_naive_aggregation():
    rng = np.random.default_rng(2024)
    objects, naive_rows = [], []
    for index in range(14):
        shape = SHAPES[index % len(SHAPES)] if index % 3 else (24, 31)
        gt, pred = _random_sequence(rng, shape)
        name = f"seq{index}"
        objects += evaluate_sequence_masks(gt, pred, sequence=name)
        naive_rows += naive_sequence(gt, pred, name)
    scores = DavisScores(objects)
    assert [o.name for o in objects] == [r[0] for r in naive_rows]
    for obj, (_, j_stats, f_stats) in zip(objects, naive_rows):
        assert (obj.j_mean, obj.j_recall, obj.j_decay) == pytest.approx(j_stats, abs=1e-6)
        assert (obj.f_mean, obj.f_recall, obj.f_decay) == pytest.approx(f_stats, abs=1e-6)
    row, want = scores.global_row, naive_global(naive_rows)
    assert list(row) == list(GLOBAL_COLUMNS)
    for column in GLOBAL_COLUMNS:
        assert row[column] == pytest.approx(want[column], abs=1e-6)
    assert 0.0 < row["J&F-Mean"] < 1.0


def test_object_count_is_the_first_frames_largest_id():
    gt = np.zeros((5, 8, 9), dtype=np.uint8)
    gt[:, 1:3, 1:3] = 1
    gt[:, 5:7, 5:8] = 3  # first frame ids {1, 3}: objects 1, 2, 3 are scored
    gt[2, 0, 8] = 4  # id 4 appears later: not scored
    gt[:, 4, :] = 255  # void row
    pred = np.where(gt == 255, 0, gt)
    pred[pred == 4] = 0
    objects = evaluate_sequence_masks(gt, pred, sequence="s")
    assert [o.object_id for o in objects] == [1, 2, 3]
    assert [o.name for o in objects] == ["s_1", "s_2", "s_3"]
    assert all(o.j_mean == 1.0 and o.f_mean == 1.0 for o in objects)  # object 2: both empty
    assert len(objects[0].j) == 3  # first and last frames are not scored


def test_void_counts_as_background_in_semi_supervised():
    gt = np.zeros((3, 10, 10), dtype=np.uint8)
    gt[:, 2:6, 2:6] = 1
    gt[:, 6, 2:6] = 255  # void band below the object
    pred = np.where(gt == 255, 1, gt)  # predicting the void band as the object...
    (obj,) = evaluate_sequence_masks(gt, pred)
    assert obj.j_mean == pytest.approx(16 / 20)  # ...counts as false positives
    assert obj.j_mean == pytest.approx(naive_j(gt[1] == 1, pred[1] == 1))


def test_prediction_ids_beyond_the_object_count_are_rejected():
    gt = np.zeros((4, 6, 6), dtype=np.uint8)
    gt[:, 1:3, 1:3] = 1
    pred = gt.copy()
    pred[2, 4, 4] = 2
    with pytest.raises(InputError, match="frame 00002.*exceeds"):
        evaluate_sequence_masks(gt, pred, sequence="s")
    pred[2, 4, 4] = 255  # void is not a valid prediction id either
    with pytest.raises(InputError, match="255"):
        evaluate_sequence_masks(gt, pred, sequence="s")
    # The first and last frames are not read, so ids there do not matter.
    pred = gt.copy()
    pred[0, 5, 5] = 9
    pred[-1, 5, 5] = 9
    evaluate_sequence_masks(gt, pred, sequence="s")


def test_missing_object_in_prediction_scores_as_empty():
    gt = np.zeros((4, 6, 6), dtype=np.uint8)
    gt[:, 0:2, 0:2] = 1
    gt[:, 3:5, 3:5] = 2
    pred = np.where(gt == 2, 0, gt)
    first, second = evaluate_sequence_masks(gt, pred)
    assert first.j_mean == 1.0
    assert second.j_mean == 0.0 and second.f_mean == 0.0


def test_davis2016_semi_supervised_binarises_both_sides():
    rng = np.random.default_rng(5)
    gt = (rng.random((6, 12, 14)) < 0.4).astype(np.uint8) * 255
    pred = np.where(rng.random(gt.shape) < 0.9, gt, 255 - gt)  # 0/255 predictions
    (obj,) = evaluate_sequence_masks(gt, pred, year=2016, sequence="b")
    js = [naive_j(gt[t] != 0, pred[t] != 0) for t in range(1, 5)]
    fs = [naive_f(gt[t] != 0, pred[t] != 0) for t in range(1, 5)]
    assert (obj.j_mean, obj.j_recall, obj.j_decay) == pytest.approx(naive_stats(js))
    assert (obj.f_mean, obj.f_recall, obj.f_decay) == pytest.approx(naive_stats(fs))


def test_davis2016_unsupervised_merges_foreground():
    rng = np.random.default_rng(9)
    seq_rows = []
    objects = []
    for index in range(3):
        gt = (rng.random((7, 10, 13)) < 0.3).astype(np.uint8) * 255
        # several predicted segments: any nonzero id is foreground
        pred = np.where(rng.random(gt.shape) < 0.85, gt != 0, gt == 0).astype(np.uint8)
        pred *= rng.integers(1, 5, size=gt.shape).astype(np.uint8)
        got = evaluate_sequence_masks(
            gt, pred, task="unsupervised", year=2016, sequence=f"u{index}"
        )
        assert len(got) == 1 and got[0].name == f"u{index}_1"
        objects += got
        js = [naive_j(gt[t] != 0, pred[t] != 0) for t in range(1, 6)]
        fs = [naive_f(gt[t] != 0, pred[t] != 0) for t in range(1, 6)]
        seq_rows.append((f"u{index}_1", naive_stats(js), naive_stats(fs)))
    row = DavisScores(objects, task="unsupervised", year=2016).global_row
    want = naive_global(seq_rows)  # averaged over sequences
    for column in GLOBAL_COLUMNS:
        assert row[column] == pytest.approx(want[column], abs=1e-9)


def test_unsupervised_on_2017_layout_merges_objects_and_keeps_void_background():
    rng = np.random.default_rng(11)
    gt = rng.integers(0, 4, size=(6, 12, 15)).astype(np.uint8)
    gt[rng.random(gt.shape) < 0.1] = 255  # void
    pred = np.where(rng.random(gt.shape) < 0.8, (gt != 0) & (gt != 255), rng.random(gt.shape) < 0.5)
    pred = pred.astype(np.uint8) * rng.integers(1, 3, size=gt.shape).astype(np.uint8)
    (got,) = evaluate_sequence_masks(gt, pred, task="unsupervised", year=2017, sequence="m")
    fg = (gt != 0) & (gt != 255)
    js = [naive_j(fg[t], pred[t] != 0) for t in range(1, 5)]
    fs = [naive_f(fg[t], pred[t] != 0) for t in range(1, 5)]
    assert (got.j_mean, got.j_recall, got.j_decay) == pytest.approx(naive_stats(js))
    assert (got.f_mean, got.f_recall, got.f_decay) == pytest.approx(naive_stats(fs))


def test_bad_task_and_sequences_need_three_frames():
    gt = np.zeros((4, 5, 5), dtype=np.uint8)
    with pytest.raises(InputError, match="task"):
        evaluate_sequence_masks(gt, gt, task="fully-supervised")
    with pytest.raises(InputError, match="at least 3"):
        evaluate_sequence_masks(gt[:2], gt[:2])
    with pytest.raises(ValueError):
        evaluate_sequence_masks(gt, gt[:, :4])
