"""The NoC evaluation: the official click sequence reproduced, and the CLI's reports."""
import csv
import json

import numpy as np
import pytest

import fcfi_jax
from fcfi_jax.convert.checkpoint import save_converted
from fcfi_jax.data.readers import get_dataset
from fcfi_jax.evaluation.evaluate import build_predictor, evaluate_dataset, main
from fcfi_jax.models.is_model import build_model

TINY = dict(family="hrnet", width=6, ocr_width=8, mid_ch=8, with_aux_output=True, use_leaky_relu=True,
            expansion_ratio=0.3, use_disks=True, norm_radius=5, with_prev_mask=True)


def test_official_clicks_and_ious_reproduced(fixtures_dir, data_dir):
    """First 4 clicks on the first image of the official 'clicky' evaluation (zoom-in and flip on)."""
    ref = json.loads((fixtures_dir / "eval_grabcut_hrnet18s_clicky_every10.json").read_text())["per_image"][0]
    model = fcfi_jax.load_model(fixtures_dir / "hrnet18s_clicky.pth")
    ds = get_dataset("GrabCut", data_dir / "GrabCut")
    assert ds.names[ref["index"]] == ref["image_name"]
    n = 4
    r = evaluate_dataset(build_predictor(model, "GrabCut"), ds, n, [ref["index"]], progress=False)["per_image"][0]
    assert r["clicks"] == [[c["y"], c["x"], c["is_positive"]] for c in ref["clicks"][:n]]
    np.testing.assert_allclose(r["iou"], ref["iou"][:n], atol=1e-3)
    for ours, theirs in zip(r["per_click"], ref["per_click"][:n]):
        assert ours["zoom_roi_rmin_rmax_cmin_cmax"] == theirs["zoom_roi_rmin_rmax_cmin_cmax"]
        nhwc = theirs["net_input_shape"][:1] + theirs["net_input_shape"][2:] + theirs["net_input_shape"][1:2]
        assert ours["net_input_shape"] == nhwc


def test_cli_writes_reports(data_dir, tmp_path, capsys):
    ckpt = save_converted(build_model(TINY, seed=0), tmp_path / "tiny")
    out = tmp_path / "res"
    rc = main(["--checkpoint", str(ckpt), "--datasets", "GrabCut,Berkeley", "--data-root", str(data_dir),
               "--output", str(out), "--n-clicks", "3", "--limit", "2", "--no-flip", "--cache-dir",
               str(tmp_path / "xla")])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert [r["dataset"] for r in results] == ["GrabCut", "Berkeley"]
    for r in results:
        assert r["n_samples"] == 2 and len(r["mIoU_per_click"]) == 3
        assert set(r["NoC"]) == {"NoC@80", "NoC@85", "NoC@90"}
        for s in r["per_image"]:
            assert len(s["iou"]) == len(s["clicks"]) == 3
            h, w = s["image_hw"]
            assert all(0 <= y < h and 0 <= x < w for y, x, _ in s["clicks"])
        assert r["protocol"]["compilations"] >= 0 and r["protocol"]["calls_on_a_larger_canvas"] >= 0
    # One runner serves both datasets: a canvas compiled for GrabCut is not compiled again for Berkeley.
    assert sum(r["protocol"]["compilations"] for r in results) >= 1
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert [row["dataset"] for row in rows] == ["GrabCut", "Berkeley"]
    assert (out / "miou.png").stat().st_size > 1000


def test_cli_missing_dataset_folder(tmp_path, capsys):
    rc = main(["--checkpoint", "unused", "--datasets", "DAVIS", "--data-root", str(tmp_path), "--output",
               str(tmp_path / "o")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "DAVIS" in err and str(tmp_path) in err
