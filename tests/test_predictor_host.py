"""The numpy reference predictor (tests/reference_predictor.py): AC resize vs torch, ZoomIn rules (hand-derived and
against official eval records),
and the Predictor (device step) and HostPredictor (numpy): flip batching / point bucketing / undo / errors with a fake network."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from reference_predictor import (
    HostPredictor,
    ZoomIn,
    bbox_iou,
    clicks_inside,
    new_points_array,
    object_roi,
    points_array,
    resize_ac,
    zoomed_size,
)

from fcfi_jax.inference.predictor import Predictor


def torch_ac(x_hwc, size):
    t = torch.from_numpy(np.ascontiguousarray(x_hwc.transpose(2, 0, 1)))[None]
    return F.interpolate(t, size=size, mode="bilinear", align_corners=True)[0].numpy().transpose(1, 2, 0)


# ---------------------------------------------------------------------------------------------
# (a) align-corners resize

@pytest.mark.parametrize("src,dst", [((37, 53), (101, 77)), ((101, 77), (37, 53)), ((185, 303), (214, 350)),
                                     ((214, 350), (185, 303)), ((1, 9), (5, 1)), ((7, 1), (1, 13)),
                                     ((321, 481), (700, 700)), ((13, 17), (13, 17))])
def test_resize_ac_matches_torch(src, dst):
    x = np.random.default_rng(0).standard_normal(src + (4,)).astype(np.float32)
    ours = resize_ac(x, dst)
    assert ours.shape == dst + (4,) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, torch_ac(x, dst), rtol=0, atol=1e-6)
    np.testing.assert_allclose(resize_ac(x[..., 0], dst), ours[..., 0], rtol=0, atol=1e-6)  # 2-D input


# ---------------------------------------------------------------------------------------------
# (b) ZoomIn on scripted clicks / synthetic maps

def rect_map(hw, r0, r1, c0, c1, value=0.9):
    m = np.zeros(hw, np.float32)
    m[r0:r1 + 1, c0:c1 + 1] = value
    return m


def test_zoom_roi_negative_clicks_bankers_rounding_and_crop():
    hw = (300, 400)
    z = ZoomIn(target_size=350, expansion_ratio=2.0)
    probs = rect_map(hw, 100, 119, 150, 179)
    probs[290, 10] = 0.5                          # not > 0.5: ignored
    z.prev_probs = probs
    clicks = [(110, 160, True), (50, 300, False)]
    x = np.random.default_rng(1).random(hw + (4,), dtype=np.float32)
    out, tclicks = z.transform(x, clicks)
    # mask + BOTH clicks: rows 50..119, cols 150..300. Rows: centre 84.5, size max(2*70, 200) = 200 ->
    # round(-15.5) = -16 -> clamp 0, round(184.5) = 184 (half-to-even; half-up gives 185).
    # Cols: centre 225, size 2*151 = 302 -> 74, 376.
    assert z.roi == (0, 184, 74, 376)
    # (h, w) = (185, 303), s = 350 / 303 -> (round(213.70), 350)
    assert out.shape == (214, 350, 4) and z.input_hw == (214, 350)
    np.testing.assert_allclose(out, torch_ac(x[0:185, 74:377], (214, 350)), rtol=0, atol=1e-6)
    assert tclicks == [(214 * 110 / 185, 350 * (160 - 74) / 303, True), (214 * 50 / 185, 350 * 226 / 303, False)]
    # RITM (positives only) would have produced a different box
    assert object_roi(probs > 0.5, clicks[:1], 2.0, 200) != z.roi


def test_zoom_skip_first_click_and_no_stored_map():
    z = ZoomIn(300, 2.0)
    x = np.zeros((50, 60, 4), np.float32)
    out, cl = z.transform(x, [(3, 4, True)])            # len(clicks) <= skip_clicks
    assert out is x and cl == [(3, 4, True)] and z.roi is None
    out, cl = z.transform(x, [(3, 4, True), (5, 6, False)])   # nothing stored yet
    assert out is x and z.roi is None
    full = np.full((50, 60), 0.7, np.float32)
    assert z.inverse(full) is not None and z.prev_probs is full  # no ROI: stored unchanged


def test_zoom_keep_previous_roi_rules():
    hw = (300, 400)
    x = np.zeros(hw + (4,), np.float32)
    z = ZoomIn(350, 2.0)
    z.prev_probs = rect_map(hw, 100, 119, 150, 179)
    clicks = [(110, 160, True), (50, 300, False)]
    z.transform(x, clicks)
    roi_a = (0, 184, 74, 376)
    assert z.roi == roi_a
    # New map gives B = (0, 190, 89, 371) (round(189.5) = 190); IoU product 0.905 >= 0.5 and the clicks are
    # inside A -> A is kept.
    z.prev_probs = rect_map(hw, 100, 129, 160, 189)
    assert object_roi(z.prev_probs > 0.5, clicks, 2.0, 200) == (0, 190, 89, 371)
    z.transform(x, clicks)
    assert z.roi == roi_a
    # A click ON row rmax = 184 is inside inclusively but "outside" for the official exclusive test -> the
    # ROI is recomputed: rows 50..184 -> centre 117, size 270 -> (0, 252).
    z.transform(x, clicks + [(184, 200, True)])
    assert z.roi == (0, 252, 89, 371)

    # IoU rule alone (all clicks inside the previous ROI), expansion 1 -> size 200 everywhere.
    z = ZoomIn(350, 1.0)
    inside = [(10, 10, True), (20, 20, True)]
    z.set_state(((0, 100, 0, 100), rect_map(hw, 30, 49, 30, 49), None))
    z.transform(x, inside)       # candidate (0, 130, 0, 130): IoU (101/131)^2 = 0.594 -> keep
    assert z.roi == (0, 100, 0, 100)
    z.prev_probs = rect_map(hw, 150, 169, 150, 169)
    z.transform(x, inside)       # candidate (0, 190, 0, 190): IoU (101/191)^2 = 0.280 -> replace
    assert z.roi == (0, 190, 0, 190)


def test_zoom_inverse_overwrites_and_stale_roi():
    hw = (300, 400)
    rng = np.random.default_rng(2)
    x = rng.random(hw + (4,), dtype=np.float32)
    z = ZoomIn(350, 2.0)
    z.prev_probs = rect_map(hw, 100, 119, 150, 179)
    clicks = [(110, 160, True), (50, 300, False)]
    out, _ = z.transform(x, clicks)
    maps = [rng.random(out.shape[:2], dtype=np.float32) for _ in range(3)]   # prediction, uf1, uf2
    inv = [z.inverse(m) for m in maps]
    assert z.prev_probs is inv[2]                       # the LAST inverse (uf2) drives the next ROI
    expect = np.zeros(hw, np.float32)
    expect[0:185, 74:377] = torch_ac(maps[2][..., None], (185, 303))[..., 0]
    np.testing.assert_allclose(inv[2], expect, rtol=0, atol=1e-6)

    # Stored map becomes empty -> no zoom, full image and original clicks, but the OLD ROI stays ...
    z.inverse(np.zeros(out.shape[:2], np.float32))
    roi = z.roi
    out2, cl2 = z.transform(x, clicks + [(200, 10, True)])
    assert out2 is x and cl2 == clicks + [(200, 10, True)] and z.roi == roi and z.input_hw == hw
    # ... and the full-image output is squeezed into the old ROI rectangle, zeros elsewhere.
    full = rng.random(hw, dtype=np.float32)
    res = z.inverse(full)
    expect = np.zeros(hw, np.float32)
    expect[0:185, 74:377] = torch_ac(full[..., None], (185, 303))[..., 0]
    np.testing.assert_allclose(res, expect, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# (c) ZoomIn ROI rule against the official evaluation records

@pytest.mark.parametrize("name", ["eval_grabcut_hrnet18s_clicky_every10.json", "eval_grabcut_hrnet18s_random.json"])
def test_zoom_matches_official_records(fixtures_dir, name):
    rec = json.loads((fixtures_dir / name).read_text())
    zp = rec["protocol"]["zoom_in_effective"]
    target, min_size = zp["target_size"], zp["min_crop_size"]
    n_zoomed = n_stale = 0
    for img in rec["per_image"]:
        h, w = img["image_hw"]
        clicks = [(c["y"], c["x"], c["is_positive"]) for c in img["clicks"]]
        prev = None
        for k, pc in enumerate(img["per_click"]):
            roi = pc["zoom_roi_rmin_rmax_cmin_cmax"]
            shape = tuple(pc["net_input_shape"])
            assert shape[:2] == (2, 4)                     # flip: one call, batch 2
            if roi is None:
                assert prev is None and shape[2:] == (h, w)
                continue
            roi = tuple(roi)
            rmin, rmax, cmin, cmax = roi
            assert 0 <= rmin < rmax <= h - 1 and 0 <= cmin < cmax <= w - 1
            if shape[2:] != zoomed_size(roi, target):      # only the stale-ROI case runs un-zoomed
                assert shape[2:] == (h, w) and roi == prev, (name, img["index"], k)
                n_stale += 1
            else:
                n_zoomed += 1
                seen = clicks[:k + 1]
                # a current ROI contains every click (all are added to the mask) and is >= min size unless clamped
                assert all(rmin <= y <= rmax and cmin <= x <= cmax for y, x, _ in seen)
                assert rmin == 0 or rmax == h - 1 or rmax - rmin >= min_size
                assert cmin == 0 or cmax == w - 1 or cmax - cmin >= min_size
                if prev is not None and roi != prev and clicks_inside(prev, seen):
                    assert bbox_iou(roi, prev) < zp["recompute_thresh_iou"]
            prev = roi
    assert n_zoomed > 0
    if "clicky" in name:
        assert n_stale == 9   # image 40: clicks 7 and 12..19 (0-based) run on the full image, old ROI kept


# ---------------------------------------------------------------------------------------------
# (d) Predictor (device step) and HostPredictor (numpy reference) with a fake network: the same session

@pytest.fixture(params=["Predictor", "HostPredictor"])
def cls(request):
    return {"Predictor": Predictor, "HostPredictor": HostPredictor}[request.param]


def disks(points, hw, r2):
    """(B, H, W, 2) click disks like DistMaps (rows with max(y, x) < 0 are padding)."""
    yy, xx = np.mgrid[:hw[0], :hw[1]].astype(np.float32)
    out = np.zeros((points.shape[0],) + tuple(hw) + (2,), np.float32)
    n = points.shape[1] // 2
    for b in range(points.shape[0]):
        for pol in range(2):
            for y, x, _ in points[b, pol * n:(pol + 1) * n]:
                if max(y, x) >= 0:
                    out[b, ..., pol] = np.maximum(out[b, ..., pol], (yy - y) ** 2 + (xx - x) ** 2 <= r2)
    return out


class FakeNet:
    """Flip-equivariant deterministic function of x and the click disks; records every call."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, points, new_points, gate):
        assert x.dtype == np.float32 and points.dtype == np.float32 and new_points.dtype == np.int32
        self.calls.append(dict(x=x.copy(), points=points.copy(), new_points=new_points.copy(), gate=gate))
        small, big = disks(points, x.shape[1:3], 25.0), disks(points, x.shape[1:3], 3600.0)
        logits = 8 * (small[..., :1] - small[..., 1:]) + 4 * (x[..., 3:] - 0.5) + 0.1 * x[..., :1]
        uf1 = 0.5 * x[..., 3:] + 0.25 * small[..., :1]
        uf2 = np.clip(big[..., :1] - big[..., 1:], 0, 1)
        return {"instances": logits, "updated_feedback1": uf1, "updated_feedback2": uf2}


def make_image(hw=(240, 320), seed=3):
    return np.random.default_rng(seed).integers(0, 256, hw + (3,), dtype=np.uint8)


CLICKS10 = [(60, 80, True), (70, 90, True), (150, 200, False), (30, 40, True), (200, 300, False),
            (100, 100, True), (10, 310, False), (220, 20, False), (120, 160, True), (5, 5, False)]


def test_flip_batching_points_and_gate(cls):
    net = FakeNet()
    p = cls(net, zoom_in=None, with_flip=True, max_points_bucket=8)
    img = make_image()
    p.set_image(img)
    for y, x, pos in CLICKS10:
        p.add_click(y, x, pos)
    assert len(net.calls) == 10                                   # one net call per click
    shapes = {(c["x"].shape, c["points"].shape, c["new_points"].shape) for c in net.calls}
    assert shapes == {((2, 240, 320, 4), (2, 16, 3), (2, 1, 3))}  # bucketed N = 8: constant shapes
    c = net.calls[-1]
    np.testing.assert_array_equal(c["x"][1], c["x"][0][:, ::-1])
    np.testing.assert_array_equal(c["x"][0][..., :3], img.astype(np.float32) / 255)
    pts = c["points"][0]
    pos = [(y, x, i) for i, (y, x, s) in enumerate(CLICKS10) if s]
    neg = [(y, x, i) for i, (y, x, s) in enumerate(CLICKS10) if not s]
    np.testing.assert_array_equal(pts[:5], pos)
    np.testing.assert_array_equal(pts[8:13], neg)
    assert (pts[5:8] == -1).all() and (pts[13:] == -1).all()
    flipped = c["points"][1]
    np.testing.assert_array_equal(flipped[:5, 1], [319 - x for _, x, _ in pos])
    np.testing.assert_array_equal(c["new_points"], [[[5, 5, 0]], [[5, 314, 0]]])
    assert [c["gate"] for c in net.calls] == [0.0] + [1.0] * 9
    # prev-mask channel: zeros first, then the previous probabilities
    assert (net.calls[0]["x"][..., 3] == 0).all()
    np.testing.assert_array_equal(net.calls[5]["x"][0, ..., 3], _probs_after(cls, 5))

    # flip TTA of an equivariant net changes nothing
    q = cls(FakeNet(), zoom_in=None, with_flip=False)
    q.set_image(img)
    for y, x, pos in CLICKS10:
        q.add_click(y, x, pos)
    np.testing.assert_array_equal(q.probs, p.probs)
    np.testing.assert_array_equal(q.mask, p.probs > 0.49)
    assert q.net_input_shape == (1, 240, 320, 4)


def _probs_after(cls, n):
    p = cls(FakeNet(), zoom_in=None, with_flip=False)
    p.set_image(make_image())
    for y, x, pos in CLICKS10[:n]:
        p.add_click(y, x, pos)
    return p.probs


def test_point_helpers_bucketing_and_truncation():
    lists = [[(1.5, 2.0, True)], [(3.0, -0.4, False)]]
    assert points_array(lists, 1).shape == (2, 2, 3)
    assert points_array(lists, 8).shape == (2, 16, 3)
    nine = [[(i, i, True) for i in range(9)]]
    assert points_array(nine, 8).shape == (1, 32, 3)              # 9 positives -> N = 16
    np.testing.assert_array_equal(new_points_array(lists), [[[1, 2, 1]], [[3, 0, 0]]])   # toward zero


def test_zoomed_session_uses_uf2_for_roi(cls):
    net = FakeNet()
    p = cls(net, zoom_in=(300, 2.0), with_flip=True)
    p.set_image(make_image())
    p.add_click(60, 80, True)
    assert p.roi is None and p.net_input_shape == (2, 240, 320, 4)
    p.add_click(70, 90, True)
    # uf2 of click 1 = big disk (r = 60) around (60, 80): rows 0..120, cols 20..140 -> expanded x2 and
    # clamped: (0, 181, 0, 201). The final probabilities (r = 5 disk) would have given (0, 162, 0, 182).
    assert p.roi == (0, 181, 0, 201)
    assert object_roi(_zoom_probs_after_first(cls) > 0.5, CLICKS10[:2], 2.0, 200) == (0, 162, 0, 182)
    assert p.net_input_shape == (2, 270, 300, 4)                  # round(182 * 300 / 202) = 270
    c = net.calls[-1]
    np.testing.assert_array_equal(c["points"][0, :2, :2].astype(np.float64).round(3),
                                  np.float32([[270 * 60 / 182, 300 * 80 / 202], [270 * 70 / 182, 300 * 90 / 202]])
                                  .astype(np.float64).round(3))
    assert c["new_points"][0, 0].tolist() == [int(270 * 70 / 182), int(300 * 90 / 202), 1]
    assert c["new_points"][1, 0].tolist() == [int(270 * 70 / 182), int(299 - 300 * 90 / 202), 1]
    x = np.concatenate([make_image().astype(np.float32) / 255, _zoom_probs_after_first(cls)[..., None]], -1)
    np.testing.assert_allclose(c["x"][0], torch_ac(x[0:182, 0:202], (270, 300)), rtol=0, atol=1e-6)
    assert p.probs.shape == (240, 320) and (p.probs[182:] == 0).all() and (p.probs[:, 202:] == 0).all()
    if cls is HostPredictor:
        assert p.zoom.prev_probs is p.uf2


def _zoom_probs_after_first(cls):
    p = cls(FakeNet(), zoom_in=(300, 2.0))
    p.set_image(make_image())
    return p.add_click(60, 80, True)[1]


def test_undo_and_reset(cls):
    p = cls(FakeNet(), zoom_in=(300, 2.0))
    p.set_image(make_image())
    for y, x, pos in CLICKS10[:2]:
        p.add_click(y, x, pos)
    probs2, uf2_2, roi2 = p.probs, p.uf2, p.roi
    zstate = p.zoom.get_state() if cls is HostPredictor else None
    mask3, probs3 = p.add_click(*CLICKS10[2])
    p.undo()
    assert p.clicks == tuple(CLICKS10[:2]) and p.roi == roi2
    np.testing.assert_array_equal(p.probs, probs2)
    np.testing.assert_array_equal(p.uf2, uf2_2)
    if cls is HostPredictor:
        assert all(a is b for a, b in zip(p.zoom.get_state(), zstate))
    np.testing.assert_array_equal(p.add_click(*CLICKS10[2])[1], probs3)   # same step again, same result
    p.reset()
    assert p.clicks == () and (p.probs == 0).all() and p.roi is None and p.uf1 is None
    p.undo()                                                          # nothing to undo: no-op
    net = p.net
    p.add_click(5, 6, False)
    assert net.calls[-1]["gate"] == 0.0 and (net.calls[-1]["x"][..., 3] == 0).all()


def test_initial_mask(cls):
    net = FakeNet()
    p = cls(net, with_flip=False)
    init = np.zeros((240, 320), bool)
    init[10:20, 10:20] = True
    p.set_image(make_image(), initial_mask=init)
    assert (p.probs == init).all()
    p.add_click(15, 15, True)
    assert net.calls[0]["gate"] == 1.0
    np.testing.assert_array_equal(net.calls[0]["x"][0, ..., 3], init.astype(np.float32))


def test_errors(cls):
    p = cls(FakeNet())
    with pytest.raises(RuntimeError, match="set_image"):
        p.add_click(1, 1, True)
    for bad, msg in [(np.zeros((10, 10), np.uint8), r"\(H, W, 3\)"), (np.zeros((10, 10, 4), np.uint8), "RGB"),
                     (np.zeros((10, 10, 3), np.float32), "uint8"), (np.zeros((0, 10, 3), np.uint8), "empty"),
                     ([[[0, 0, 0]]], "numpy array")]:
        with pytest.raises(ValueError, match=msg):
            p.set_image(bad)
    with pytest.raises(ValueError, match="initial_mask"):
        p.set_image(make_image(), initial_mask=np.zeros((5, 5)))
    p.set_image(make_image())
    for y, x in [(-1, 5), (240, 5), (5, 320), (5, -0.5), (float("nan"), 3)]:
        with pytest.raises(ValueError, match="outside the image"):
            p.add_click(y, x, True)
    assert p.clicks == ()
