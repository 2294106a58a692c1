"""The device click step + device clicker reproduce the official evaluation records (isegm/inference/
evaluation.py with zoom-in and flip): the same click at every step, the same zoom-in ROIs and network input
sizes, IoU within 1e-4."""
import json

import numpy as np
import pytest

import fcfi_jax
from fcfi_jax.data.readers import get_dataset
from fcfi_jax.evaluation.lockstep import LockstepEvaluator


def replay(fixtures_dir, data_dir, record, checkpoint, n_images=None, n_clicks=20, batch=5):
    rec = json.loads((fixtures_dir / record).read_text())
    refs = rec["per_image"][:n_images]
    ds = get_dataset("GrabCut", data_dir / "GrabCut")
    assert [ds.names[r["index"]] for r in refs] == [r["image_name"] for r in refs]
    zp = rec["protocol"]["zoom_in_effective"]
    ev = LockstepEvaluator(fcfi_jax.load_model(fixtures_dir / checkpoint),
                           zoom_in=(zp["target_size"], zp["expansion_ratio"]), batch=batch)
    res = ev.evaluate(ds, n_clicks, [r["index"] for r in refs], progress=False)
    assert ev.compile_count == 1
    for ref, ours in zip(refs, res["per_image"]):
        assert ours["index"] == ref["index"]
        assert ours["clicks"] == [[c["y"], c["x"], c["is_positive"]] for c in ref["clicks"][:n_clicks]], ref["index"]
        for k, (o, t) in enumerate(zip(ours["per_click"], ref["per_click"][:n_clicks])):
            assert o["zoom_roi_rmin_rmax_cmin_cmax"] == t["zoom_roi_rmin_rmax_cmin_cmax"], (ref["index"], k)
            nchw = t["net_input_shape"]
            assert o["net_input_shape"] == [nchw[0], nchw[2], nchw[3], nchw[1]], (ref["index"], k)
        np.testing.assert_allclose(ours["iou"], ref["iou"][:n_clicks], rtol=0, atol=1e-4, err_msg=str(ref["index"]))


def test_clicky_record_first_clicks(fixtures_dir, data_dir):
    """CI: the first 5 clicks of the first image (first click unzoomed, then 700x700 zoom-ins)."""
    replay(fixtures_dir, data_dir, "eval_grabcut_hrnet18s_clicky_every10.json", "hrnet18s_clicky.pth",
           n_images=1, n_clicks=5, batch=1)


@pytest.mark.slow
def test_clicky_record(fixtures_dir, data_dir):
    """All 5 images x 20 clicks in one lockstep batch (image 40 has the stale-ROI quirk of
    docs/official_quirks.md #29: 9 unzoomed clicks)."""
    replay(fixtures_dir, data_dir, "eval_grabcut_hrnet18s_clicky_every10.json", "hrnet18s_clicky.pth", batch=5)


@pytest.mark.slow
def test_random_record(fixtures_dir, data_dir):
    """All 50 GrabCut images x 20 clicks with the random-weight checkpoint."""
    replay(fixtures_dir, data_dir, "eval_grabcut_hrnet18s_random.json", "hrnet18s_random.pth", batch=10)
