"""The device click step + device clicker reproduce the official evaluation records (isegm/inference/
evaluation.py with zoom-in and flip): the same click at every step, the same zoom-in ROIs and network input
sizes, IoU within 1e-4, on the clicky and on the random-weight record (there in float64 where float32 rounding
decides a click; see test_random_record)."""
import json

import numpy as np
import pytest

import fcfi_jax
from fcfi_jax.data.readers import get_dataset
from fcfi_jax.evaluation.lockstep import LockstepEvaluator


def compare(refs, res, n_clicks):
    """Per image (record vs ours): (index, first differing click or None, IoU max abs difference before it);
    asserts the zoom-in boxes and network input shapes are equal wherever the clicks so far are."""
    out = []
    for ref, ours in zip(refs, res["per_image"]):
        assert ours["index"] == ref["index"]
        want = [[c["y"], c["x"], c["is_positive"]] for c in ref["clicks"][:n_clicks]]
        first = next((k for k, (a, b) in enumerate(zip(ours["clicks"], want)) if a != b), None)
        same = n_clicks if first is None else first
        for k, (o, t) in enumerate(zip(ours["per_click"][:same], ref["per_click"][:same])):
            assert o["zoom_roi_rmin_rmax_cmin_cmax"] == t["zoom_roi_rmin_rmax_cmin_cmax"], (ref["index"], k)
            nchw = t["net_input_shape"]
            assert o["net_input_shape"] == [nchw[0], nchw[2], nchw[3], nchw[1]], (ref["index"], k)
        diff = np.abs(np.asarray(ours["iou"][:same]) - np.asarray(ref["iou"][:same]))
        out.append((ref["index"], first, float(diff.max(initial=0.0))))
    return out


def replay(fixtures_dir, data_dir, record, checkpoint, n_images=None, n_clicks=20, batch=5, indices=None,
           dtype="float32"):
    """The record's images through `LockstepEvaluator` (one compilation); `compare`'s rows."""
    import jax.numpy as jnp

    from fcfi_jax.models.is_model import cast_model

    rec = json.loads((fixtures_dir / record).read_text())
    refs = [r for r in rec["per_image"][:n_images] if indices is None or r["index"] in indices]
    ds = get_dataset("GrabCut", data_dir / "GrabCut")
    assert [ds.names[r["index"]] for r in refs] == [r["image_name"] for r in refs]
    zp = rec["protocol"]["zoom_in_effective"]
    model = fcfi_jax.load_model(fixtures_dir / checkpoint)
    if dtype != "float32":
        cast_model(model, dtype)   # inside jax.enable_x64 (load_model's float64 would turn x64 on for the process)
    ev = LockstepEvaluator(model, zoom_in=(zp["target_size"], zp["expansion_ratio"]), batch=batch,
                           dtype=jnp.dtype(dtype))
    res = ev.evaluate(ds, n_clicks, [r["index"] for r in refs], progress=False)
    assert ev.compile_count == 1
    rows = compare(refs, res, n_clicks)
    print(f"{record} {dtype}: {len(refs)} images x {n_clicks} clicks; (index, first differing click, IoU max abs "
          f"difference before it): {rows}")
    return rows


def assert_reproduced(rows, iou_atol=1e-4):
    bad = [r for r in rows if r[1] is not None or r[2] > iou_atol]
    assert not bad, bad


def test_clicky_record_first_clicks(fixtures_dir, data_dir):
    """CI: the first 5 clicks of the first image (first click unzoomed, then 700x700 zoom-ins)."""
    assert_reproduced(replay(fixtures_dir, data_dir, "eval_grabcut_hrnet18s_clicky_every10.json",
                             "hrnet18s_clicky.pth", n_images=1, n_clicks=5, batch=1))


@pytest.mark.slow
def test_clicky_record(fixtures_dir, data_dir):
    """All 5 images x 20 clicks in one lockstep batch (image 40 has the stale-ROI quirk of
    docs/official_quirks.md #29: 9 unzoomed clicks)."""
    assert_reproduced(replay(fixtures_dir, data_dir, "eval_grabcut_hrnet18s_clicky_every10.json",
                             "hrnet18s_clicky.pth", batch=5))


@pytest.mark.slow
def test_random_record(fixtures_dir, data_dir):
    """All 50 GrabCut images x 20 clicks with the random-weight checkpoint, in float32, then again in float64 for
    any image whose clicks float32 rounding decides.

    In float32 every image must have the same zoom-in boxes and input shapes wherever its clicks agree with the
    record, and IoU within 1e-4 (the bound of the issue that asked for it) before any differing click. This
    network amplifies float32 rounding, and at a near-tie of the clicker one pixel of difference gives another
    click; so each image with a differing click is replayed in float64, which must reproduce it: the same clicks,
    boxes and shapes, IoU within 2e-4 (the record's own float32 error, 1.68e-4 measured on image 47). At most 2 such
    images (1 measured). The step must also round like PyTorch's kernels: with the resize taps' source coordinate
    contracted into a fused multiply-add (see click_step._stored) three images were off by up to 2.6e-4.
    2026-12-06, 2-core CPU, the network per sample (the CPU's lockstep form): IoU 9.6e-5 at most (image 6); 49
    images every click equal; image 28 took another 4th click after IoU within 1.5e-6, and in float64 reproduces
    all 20 (IoU 7.6e-6). With the network batched over the 10 samples all 50 agreed in float32: which form rounds
    like the record at a near-tie is chance. About 45 minutes."""
    import jax

    rows = replay(fixtures_dir, data_dir, "eval_grabcut_hrnet18s_random.json", "hrnet18s_random.pth", batch=10)
    assert max(r[2] for r in rows) <= 1e-4, rows
    suspects = [r[0] for r in rows if r[1] is not None]
    assert len(suspects) <= 2, rows
    if suspects:
        with jax.enable_x64(True):
            assert_reproduced(replay(fixtures_dir, data_dir, "eval_grabcut_hrnet18s_random.json",
                                     "hrnet18s_random.pth", indices=suspects, batch=min(len(suspects), 10),
                                     dtype="float64"), iou_atol=2e-4)


@pytest.mark.slow
def test_device_step_equals_host_predictor(fixtures_dir, data_dir):
    """The device click step, fused (lockstep) and split around the network (`Predictor`, what evaluation, the
    demo and predict run), against the numpy `HostPredictor` on the same clicks (zoom-in and flip on): the same
    ROIs and network input sizes, probabilities within float32 noise at every click (1e-6; measured 3.6e-7 fused, 2.7e-7 split).
    A wrongly rounded click coordinate or zoom box moves a click disk or the crop and shows as 1e-3..1e-2 here.
    Slow (~90 s): in CI, test_clicky_record_first_clicks checks the fused step and the clicky record replay of
    tests/test_evaluate.py the split one with the real network, and
    test_float64_step_equals_float64_host_predictor the arithmetic of both against the host's."""
    import jax
    import jax.numpy as jnp
    from reference_predictor import HostPredictor

    from fcfi_jax.evaluation.evaluate import build_predictor
    from fcfi_jax.inference.click_step import click_step, init_state, make_tables

    rec = json.loads((fixtures_dir / "eval_grabcut_hrnet18s_clicky_every10.json").read_text())
    ref = [r for r in rec["per_image"] if r["image_name"] == "banana1"][0]
    sample = get_dataset("GrabCut", data_dir / "GrabCut")[ref["index"]]
    model = fcfi_jax.load_model(fixtures_dir / "hrnet18s_clicky.pth")
    ev = LockstepEvaluator(model, zoom_in=(700, 3.0), batch=1)
    cfg = ev.config_for([sample.gt.shape], 4)
    tables = make_tables(cfg, ev.ffcm_ratio)
    (h, w), (hc, wc) = sample.gt.shape, cfg.image_canvas
    image = np.zeros((hc, wc, 3), np.float32)
    image[:h, :w] = sample.image.astype(np.float32) / np.float32(255)
    step = jax.jit(lambda p, t, i, hw, s, c: click_step(ev._net, cfg, p, t, i, hw, s, c))
    split = build_predictor(model, "GrabCut")
    state, host = init_state(cfg), HostPredictor(split.net, zoom_in=(700, 3.0))
    host.set_image(sample.image)
    split.set_image(sample.image)
    errs = []
    for c in ref["clicks"][:4]:
        click = (c["y"], c["x"], c["is_positive"])
        state, probs, _ = step(ev.params, tables, jnp.asarray(image), jnp.asarray([h, w], jnp.int32), state,
                               jnp.asarray(click, jnp.int32))
        _, host_probs = host.add_click(*click)
        _, split_probs = split.add_click(*click)
        assert (tuple(np.asarray(state.roi).tolist()) if bool(state.has_roi) else None) == host.roi == split.roi
        assert [2, *np.asarray(state.net_hw).tolist(), 4] == list(host.net_input_shape) == list(split.net_input_shape)
        errs.append((float(np.abs(np.asarray(probs)[:h, :w] - host_probs).max()),
                     float(np.abs(split_probs - host_probs).max())))
    print("banana1, 4 clicks: (fused, split) max |probs - host probs|:", errs)
    assert all(fused < 1e-6 and s < 1e-6 for fused, s in errs), errs   # measured 3.6e-7 and 2.7e-7


def _pixel_net(x, points, new_points, gate):
    """A stand-in network for exactness checks: per pixel (so the canvas padding cannot matter), smooth, and
    depending on every input: colour and previous mask, a bump of sign +/- at every click of `points` and one at
    the newest click, scaled by the gate. Outputs as the network's (B, H, W, 1) dict."""
    import jax
    import jax.numpy as jnp

    _, h, w, _ = x.shape
    yy, xx = jnp.arange(h, dtype=x.dtype)[:, None], jnp.arange(w, dtype=x.dtype)[None, :]
    py, px = points[..., 0, None, None].astype(x.dtype), points[..., 1, None, None].astype(x.dtype)
    sign = jnp.where(jnp.arange(points.shape[1]) < points.shape[1] // 2, 1.0, -1.0)[:, None, None]
    bumps = jnp.where(points[..., 2, None, None] >= 0, sign * jnp.exp(-((yy - py) ** 2 + (xx - px) ** 2) / 800), 0)
    ny, nx = new_points[:, 0, 0, None, None].astype(x.dtype), new_points[:, 0, 1, None, None].astype(x.dtype)
    newest = jnp.exp(-((yy - ny) ** 2 + (xx - nx) ** 2) / 300)
    logits = 3 * bumps.sum(axis=1) + x[..., 0] - 0.5 * x[..., 1] + 0.25 * x[..., 2] + 2 * x[..., 3] - 1 + gate * newest
    return {"instances": logits[..., None], "updated_feedback1": (0.9 * x[..., 3] + 0.1 * jnp.tanh(logits))[..., None],
            "updated_feedback2": jax.nn.sigmoid(logits)[..., None]}


def test_float64_step_equals_float64_host_predictor():
    """In float64 the device step (fused, and split around the network as `Predictor` runs it) and the numpy
    `HostPredictor` compute the same numbers: zoom-in boxes, input sizes and
    probabilities within 1e-12, on 5 flipped clicks of which 4 zoom (a box inside the image kept for two
    clicks, then recomputed), with a stand-in network (`_pixel_net`; the step's network call itself is
    checked against the host in float32 by test_device_step_equals_host_predictor): float32 differences of the
    record replays are rounding, not arithmetic."""
    import jax
    import jax.numpy as jnp
    from reference_predictor import HostPredictor

    from fcfi_jax.inference.click_step import StepConfig, click_step, init_state, make_tables
    from fcfi_jax.inference.predictor import Predictor

    h, w = 300, 410
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:h, :w]
    blob = ((yy - 140) / 60) ** 2 + ((xx - 200) / 90) ** 2 < 1
    image = (rng.random((h, w, 3)) * 60 + 150 * blob[..., None]).astype(np.uint8)
    clicks = [(140, 200, True), (60, 330, False), (170, 150, True), (120, 260, False), (290, 20, True)]
    with jax.enable_x64(True):
        cfg = StepConfig(image_canvas=(304, 416), net_canvas=(304, 416), zoom_in=(256, 1.4), max_clicks=5)
        tables = make_tables(cfg, 0.3)
        step = jax.jit(lambda t, i, hw, s, c: click_step(lambda p, *a: _pixel_net(*a[:4]), cfg, None, t, i, hw, s, c))
        canvas = np.zeros(cfg.image_canvas + (3,), np.float64)
        canvas[:h, :w] = image / 255.0
        state = init_state(cfg, jnp.float64)
        host = HostPredictor(_pixel_net, zoom_in=(256, 1.4), dtype="float64")
        host.set_image(image)
        split = Predictor(_pixel_net, zoom_in=(256, 1.4), dtype="float64")   # the same step, network in between
        split.set_image(image)
        rois = []
        for c in clicks:
            state, probs, _ = step(tables, jnp.asarray(canvas), jnp.asarray([h, w], jnp.int32), state,
                                   jnp.asarray(c, jnp.int32))
            _, host_probs = host.add_click(*c)
            _, split_probs = split.add_click(*c)
            assert (tuple(np.asarray(state.roi).tolist()) if bool(state.has_roi) else None) == host.roi == split.roi
            assert [2, *np.asarray(state.net_hw).tolist(), 4] == list(host.net_input_shape) == list(split.net_input_shape)
            rois.append(host.roi)
            err = float(np.abs(np.asarray(probs)[:h, :w] - host_probs).max())
            assert err < 1e-12, (c, err)
            assert float(np.abs(split_probs - host_probs).max()) < 1e-12, c
    # unzoomed first click, a box inside the image kept for two clicks, then recomputed for a click outside it
    assert rois[0] is None and rois[1] == rois[2] == rois[3] != rois[4] and rois[1] != (0, h - 1, 0, w - 1), rois
