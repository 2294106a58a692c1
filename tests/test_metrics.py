"""Metrics against values recorded from the official evaluator."""
import json

import numpy as np
import pytest

from fcfi_jax.evaluation.metrics import (
    NOC_THRESHOLDS,
    assd,
    boundary_iou,
    compute_noc_metrics,
    iou,
    official_thresholds,
    time_metrics,
)


@pytest.mark.parametrize("name", ["eval_grabcut_hrnet18s_random.json", "eval_grabcut_hrnet18s_clicky_every10.json"])
def test_recompute_official_report(name, fixtures_dir):
    report = json.loads((fixtures_dir / name).read_text())
    all_ious = [rec["iou"] for rec in report["per_image"]]
    metrics = compute_noc_metrics(all_ious, max_clicks=report["protocol"]["n_clicks"])
    out = metrics.as_dict()
    assert out["NoC"] == report["NoC"]
    assert out[">=20"] == report[">=20"]
    assert out["mIoU_per_click"] == report["mIoU_per_click"]   # exact: float32 mean as official
    assert metrics.miou_per_click.dtype == np.float32
    spc, spi = time_metrics(all_ious, report["timing"]["elapsed_s"])
    if len(all_ious) == report["n_images"]:
        assert spc == report["timing"]["mean_seconds_per_click"]
        assert spi == report["timing"]["mean_seconds_per_image"]


@pytest.mark.parametrize("name", ["golden_hrnet18s_native.npz", "golden_hrnet18s_crop333x417.npz",
                                  "golden_r101_crop333x417.npz"])
def test_per_click_metrics_match_official(name, fixtures_dir):
    z = np.load(fixtures_dir / name)
    gt = z["gt_mask"].astype(np.int32)
    for k in (1, 2, 3):
        pred = z[f"click{k}_pred_mask"] > 0.5
        assert iou(pred, gt) == z["iou"][k - 1]
        assert boundary_iou(pred, gt) == z["biou"][k - 1]
        assert assd(pred, gt) == z["assd"][k - 1]
        assert iou(pred, gt).dtype == np.float32


def test_official_thresholds():
    assert NOC_THRESHOLDS == (0.8, 0.8500000000000001, 0.9000000000000001)
    assert official_thresholds(1.01) == (0.8, 0.8500000000000001, 0.9000000000000001, 0.9500000000000002)
    # no float32 lies between 0.85 and 0.8500000000000001 (same for 0.9, 0.95): equivalent for float32 IoUs
    for t, t_official in zip((0.8, 0.85, 0.9, 0.95), official_thresholds(1.01)):
        below = np.nextafter(np.float32(t_official), np.float32(0))
        above = np.nextafter(below, np.float32(1))
        assert below < t <= above and below < t_official <= above


def test_noc_nof_semantics():
    ious = [
        [0.5, 0.7, 0.86, 0.95] + [0.95] * 16,   # NoC@85 = 3, NoC@90 = 4
        [0.1] * 19 + [0.91],                     # reached exactly at click 20: NoC 20, counted as failure
        [0.2] * 20,                              # never reached
    ]
    m = compute_noc_metrics(ious)
    assert m.per_sample_noc.tolist() == [[3, 3, 4], [20, 20, 20], [20, 20, 20]]
    assert m.noc == pytest.approx([43 / 3, 43 / 3, 44 / 3])
    assert m.nof == (2, 2, 2)
    assert m.as_dict()["NoC"].keys() == {"NoC@80", "NoC@85", "NoC@90"}
    # IoUs are cast to float32 as the official evaluator stores them: exactly 0.85 reaches NoC@85
    assert compute_noc_metrics([[0.5, 0.85]], max_clicks=20).per_sample_noc[0, 1] == 2
    # mIoU per click over the shortest sequence
    m = compute_noc_metrics([[0.2, 0.4, 0.6], [0.4, 0.6]])
    np.testing.assert_array_equal(m.miou_per_click, np.float32([0.3, 0.5]))


def test_iou_ignore_and_empty():
    gt = np.array([[1, 1, 0, -1]])
    assert iou(np.array([[1, 0, 0, 1]], bool), gt) == np.float32(0.5)   # ignore pixel excluded from the union
    assert iou(np.array([[1, 1, 0, 0]]), gt) == 1.0
    assert np.isnan(iou(np.zeros((1, 4), bool), np.zeros((1, 4))))    # 0 / 0 as official
