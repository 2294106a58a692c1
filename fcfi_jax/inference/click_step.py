"""One interactive click as one jittable device function: state + next click -> new state and probabilities.

Everything the host `Predictor.get_prediction` does (isegm/inference/predictors/base.py get_prediction with
isegm/inference/transforms/zoom_in.py and AddHorizontalFlip) runs here on fixed shapes:

  * the image and every full-resolution map live in the top-left (H, W) corner of an *image canvas*
    (Hc, Wc); the network input lives in the top-left (h', w') corner of a *net canvas* (Hn, Wn) and the
    model runs in canvas mode with the true size as a traced value (see `fcfi_jax.inference.runner`);
  * ZoomIn (isegm/inference/transforms/zoom_in.py, isegm/utils/misc.py): ROI from the stored map (> 0.5,
    every click pixel added), expansion with Python's round-half-to-even, clamping, the keep-previous-ROI
    rule (clicks inside with the max side exclusive, product of 1-D IoUs), the stale-ROI quirk
    (docs/official_quirks.md #29), the stored map overwritten by every inverse (so the next ROI comes from uf2);
  * crop + align-corners bilinear resize to the zoomed size, the horizontal flip as batch 2, the flip merge,
    the sigmoid, the inverse resize into the ROI, the threshold.

Float64 host arithmetic of the official code (expand_bbox's rounding, the zoomed size) is replaced by exact
lookup tables computed on the host in float64 (`StepTables`), so the integer results are bit-identical on
any device, including ones without float64. Click coordinates remapped by the zoom, y' = h' (y - rmin) / h,
are the rational p / h rounded to float32 (what the official float64 value becomes in the float32 points
tensor; `models.rounding.div_f32`: integer arithmetic, since XLA's float32 division is not correctly rounded on
every backend) and truncated with integer division (torch `.long()`); the flipped x' = w' - 1 - x'
likewise.
One approximation remains: the keep-previous-ROI test `iou_r * iou_c < 0.5` is evaluated exactly on the
integer segment lengths, while the official float64 product of two rounded quotients may land on either side
of the threshold when the exact product equals it.

Maps are computed in the image's dtype (float32 by default, float64 stays float64); resize taps follow
PyTorch's align-corners kernel in that dtype (`ac_taps` of tests/reference_predictor.py for float32).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fcfi_jax.inference.defaults import POINTS_BUCKET
from fcfi_jax.models.rounding import div_f32

__all__ = ["StepConfig", "StepTables", "ClickState", "NetInput", "Plan", "init_state", "plan_click", "finish_click",
           "click_step", "make_tables", "points_from_clicks", "step_canvases"]


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """Static settings of the step (hashable: part of the compiled program's key).

    zoom_in: (target_size, expansion_ratio) or None; the other ZoomIn parameters at the official defaults
    (skip_clicks 1, min_crop_size 200, recompute_thresh_iou 0.5, prob_thresh 0.5). max_clicks: click slots of
    the state; points_n: N of the (2N, 3) points tensor (>= max_clicks would never drop a click).
    """
    image_canvas: tuple[int, int]
    net_canvas: tuple[int, int]
    zoom_in: tuple | None = None
    with_flip: bool = True
    prob_thresh: float = 0.49
    max_clicks: int = POINTS_BUCKET
    points_n: int = POINTS_BUCKET
    skip_clicks: int = 1
    min_crop_size: int = 200
    recompute_thresh_iou: float = 0.5
    zoom_prob_thresh: float = 0.5

    def __post_init__(self):
        if self.skip_clicks < 0:
            raise ValueError("click_step: skip_clicks < 0 (zoom on the first click) is not supported; use >= 0")
        if self.points_n < 1 or self.max_clicks < 1:
            raise ValueError("click_step: max_clicks and points_n must be >= 1")
        if self.zoom_in is not None and not isinstance(self.zoom_in[0], (int, np.integer)):
            raise ValueError("click_step: zoom_in target size must be an int (a fixed (h, w) target is not supported)")
        hc, wc = self.image_canvas
        hn, wn = self.net_canvas
        if hn < hc or wn < wc:
            raise ValueError(f"click_step: net canvas {self.net_canvas} must hold the image canvas {self.image_canvas}")
        if self.zoom_in is not None and min(hn, wn) < self.zoom_in[0]:
            raise ValueError(f"click_step: net canvas {self.net_canvas} must hold the zoom target {self.zoom_in[0]}")


def step_canvases(hw, step: int, zoom_in=None):
    """(image canvas, net canvas) of a `StepConfig` for images up to `hw`: the image canvas holds them
    (multiples of `step`), the net canvas also the zoom target square."""
    from .runner import canvas_size

    hc, wc = canvas_size(hw[0], hw[1], step)
    hn, wn = hc, wc
    if zoom_in is not None:
        t = canvas_size(zoom_in[0], zoom_in[0], step)
        hn, wn = max(hn, t[0]), max(wn, t[1])
    return (hc, wc), (hn, wn)


class StepTables(NamedTuple):
    """Host-computed (float64, as the official code) integer tables, device arrays.

    expand_lo/hi[start, n]: round(c -/+ 0.5 * max(ratio * n, min_size)) of a segment [start, start + n - 1]
    with centre c = start + (n - 1) / 2 (isegm/utils/misc.py expand_bbox), n >= 1;
    zoom_h/w[h, w]: round(h * s), round(w * s), s = target / max(h, w) (zoom_in.py), h, w >= 1;
    ffcm_half[n]: the FFCM box half size int(e * n / 2 + 0.5) for an input side n (model.geometry).
    """
    expand_lo: jax.Array
    expand_hi: jax.Array
    zoom_h: jax.Array
    zoom_w: jax.Array
    ffcm_half: jax.Array


def make_tables(cfg: StepConfig, ffcm_expansion_ratio: float) -> StepTables:
    """The lookup tables for `cfg` (image canvas sizes for the ROI, net canvas sizes for the FFCM box)."""
    L = max(cfg.image_canvas)
    n = np.arange(L + 1, dtype=np.float64)
    start = np.arange(L, dtype=np.float64)[:, None]
    if cfg.zoom_in is not None:
        target, ratio = cfg.zoom_in
        size = np.maximum(ratio * n, cfg.min_crop_size)[None, :]          # float64 like Python floats
        centre = 0.5 * (start + (start + n[None, :] - 1))
        lo = np.round(centre - 0.5 * size).astype(np.int32)              # np.round: half to even, as round()
        hi = np.round(centre + 0.5 * size).astype(np.int32)
        hh, ww = np.meshgrid(n, n, indexing="ij")
        with np.errstate(divide="ignore", invalid="ignore"):
            s = target / np.maximum(hh, ww)
            zh = np.nan_to_num(np.round(hh * s)).astype(np.int32)
            zw = np.nan_to_num(np.round(ww * s)).astype(np.int32)
    else:
        lo = hi = np.zeros((L, L + 1), np.int32)
        zh = zw = np.zeros((L + 1, L + 1), np.int32)
    m = max(cfg.net_canvas)
    half = np.array([int(ffcm_expansion_ratio * k / 2 + 0.5) for k in range(m + 1)], np.int32)
    return StepTables(*(jnp.asarray(a) for a in (lo, hi, zh, zw, half)))


class ClickState(NamedTuple):
    """Per-sample session state (add a leading batch axis for lockstep evaluation).

    probs, uf1, uf2: (Hc, Wc) maps after the last click; zmap/has_zmap: the ZoomIn's stored map;
    roi (4,) int32 (rmin, rmax, cmin, cmax) inclusive and has_roi; clicks (max_clicks, 3) int32 (y, x, pos);
    n_clicks; first_gate: gate of the first click (0, or 1 with an initial mask); net_hw: (h', w') of the last
    network input.
    """
    probs: jax.Array
    uf1: jax.Array
    uf2: jax.Array
    zmap: jax.Array
    has_zmap: jax.Array
    roi: jax.Array
    has_roi: jax.Array
    clicks: jax.Array
    n_clicks: jax.Array
    first_gate: jax.Array
    net_hw: jax.Array


def init_state(cfg: StepConfig, dtype=jnp.float32, initial_probs=None) -> ClickState:
    """A fresh session: zero prev mask and gate 0, or `initial_probs` (Hc, Wc) and gate 1 (not official)."""
    z = jnp.zeros(cfg.image_canvas, dtype)
    probs = z if initial_probs is None else jnp.asarray(initial_probs, dtype)
    return ClickState(probs=probs, uf1=z, uf2=z, zmap=z, has_zmap=jnp.bool_(False),
                      roi=jnp.zeros(4, jnp.int32), has_roi=jnp.bool_(False),
                      clicks=jnp.full((cfg.max_clicks, 3), -1, jnp.int32), n_clicks=jnp.int32(0),
                      first_gate=jnp.asarray(0.0 if initial_probs is None else 1.0, jnp.float32),
                      net_hw=jnp.zeros(2, jnp.int32))


# ------------------------------------------------------------------------------------------------
# align-corners bilinear resize between windows of two canvases

def _stored(x, false):
    """x as stored in its dtype. XLA (CPU and GPU) contracts a product and a following sum into one fused
    multiply-add, which skips the product's rounding: src - i0 of the resize taps then differs from PyTorch's by
    up to an ulp of src (7e-6 in a resized image). An OR with a traced all-zero bit pattern (`false`: a traced
    predicate that is False) is opaque to the compiler, so the product is rounded first; an optimization barrier
    is removed on CPU."""
    bits = jnp.dtype(jnp.int32 if x.dtype == jnp.float32 else jnp.int64)
    return jax.lax.bitcast_convert_type(jax.lax.bitcast_convert_type(x, bits) | false.astype(bits), x.dtype)


def _taps(n_canvas, n_out, n_in, dst_off, src_off, dtype):
    """Taps of `ac_taps` (tests/reference_predictor.py) for the output index t = i - dst_off of every canvas index i:
    (source indices i0, i1 into the source canvas, weights w0, w1, inside-the-window flag)."""
    i = jnp.arange(n_canvas, dtype=jnp.int32)
    t = i - dst_off
    inside = (t >= 0) & (t < n_out)
    t = jnp.clip(t, 0, None)
    # float32: correctly rounded as PyTorch's float32(n_in - 1) / (n_out - 1); XLA's float32 division is not
    # on every backend (an ulp off the scale moved the crop by up to 7e-6 against PyTorch's resize)
    if jnp.dtype(dtype) == jnp.float32:
        q = div_f32(n_in - 1, jnp.maximum(n_out - 1, 1))
    else:
        q = (n_in - 1).astype(dtype) / jnp.maximum(n_out - 1, 1).astype(dtype)
    scale = jnp.where(n_out > 1, q, jnp.zeros((), dtype))
    src = _stored(t.astype(dtype) * scale, n_in < 0)
    i0 = jnp.minimum(src.astype(jnp.int32), n_in - 1)                       # truncation == floor (src >= 0)
    i1 = jnp.minimum(i0 + 1, n_in - 1)
    lam1 = jnp.clip(src - i0.astype(dtype), 0, 1)
    lam0 = jnp.ones((), dtype) - lam1
    return i0 + src_off, i1 + src_off, lam0, lam1, inside


def resize_window(src, src_off, in_hw, out_hw, dst_off, dst_canvas):
    """dst (Hd, Wd, ...) zeros with dst[r0 + t, c0 + u] = resize_ac(src[window], out_hw)[t, u]: the window of
    `src` at `src_off` of size in_hw, align-corners resized to out_hw, pasted at `dst_off`. Columns then rows,
    as `resize_ac` of tests/reference_predictor.py (PyTorch's CPU evaluation order)."""
    dt = src.dtype
    ri0, ri1, rw0, rw1, rin = _taps(dst_canvas[0], out_hw[0], in_hw[0], dst_off[0], src_off[0], dt)
    ci0, ci1, cw0, cw1, cin = _taps(dst_canvas[1], out_hw[1], in_hw[1], dst_off[1], src_off[1], dt)
    hs, ws = src.shape[:2]
    ci0, ci1 = jnp.clip(ci0, 0, ws - 1), jnp.clip(ci1, 0, ws - 1)
    ri0, ri1 = jnp.clip(ri0, 0, hs - 1), jnp.clip(ri1, 0, hs - 1)
    ex = (slice(None),) + (None,) * (src.ndim - 2)        # weights over the W axis: (Wd, 1, ...)
    cols = jnp.take(src, ci0, axis=1) * cw0[ex] + jnp.take(src, ci1, axis=1) * cw1[ex]
    ey = (slice(None), None) + (None,) * (src.ndim - 2)    # weights over the H axis: (Hd, 1, 1, ...)
    out = jnp.take(cols, ri0, axis=0) * rw0[ey] + jnp.take(cols, ri1, axis=0) * rw1[ey]
    keep = (rin[:, None] & cin[None, :])[(...,) + (None,) * (src.ndim - 2)]
    return jnp.where(keep, out, jnp.zeros((), dt))


def flip_window(x, w):
    """Mirror the valid columns [0, w) of x (H, Wc, ...) along W; columns >= w stay zero."""
    j = jnp.arange(x.shape[1], dtype=jnp.int32)
    src = jnp.clip(w - 1 - j, 0, x.shape[1] - 1)
    keep = (j < w)[(None, slice(None)) + (None,) * (x.ndim - 2)]
    return jnp.where(keep, jnp.take(x, src, axis=1), jnp.zeros((), x.dtype))


# ------------------------------------------------------------------------------------------------
# ZoomIn pieces (isegm/inference/transforms/zoom_in.py, isegm/utils/misc.py)

def _object_roi(tables, cfg, mask, clicks, valid_click, hw):
    """get_object_roi: bbox of the mask with every click pixel set, expanded (tables) and clamped."""
    mask = mask.at[jnp.where(valid_click, clicks[:, 0], mask.shape[0]),
                   jnp.where(valid_click, clicks[:, 1], mask.shape[1])].set(True, mode="drop")
    rows, cols = mask.any(axis=1), mask.any(axis=0)
    rmin = jnp.argmax(rows).astype(jnp.int32)
    rmax = (mask.shape[0] - 1 - jnp.argmax(rows[::-1])).astype(jnp.int32)
    cmin = jnp.argmax(cols).astype(jnp.int32)
    cmax = (mask.shape[1] - 1 - jnp.argmax(cols[::-1])).astype(jnp.int32)
    nr, nc = rmax - rmin + 1, cmax - cmin + 1
    return jnp.stack([jnp.maximum(tables.expand_lo[rmin, nr], 0), jnp.minimum(tables.expand_hi[rmin, nr], hw[0] - 1),
                      jnp.maximum(tables.expand_lo[cmin, nc], 0), jnp.minimum(tables.expand_hi[cmin, nc], hw[1] - 1)])


def _keep_roi_fails(cfg, roi, new, clicks, valid_click):
    """True when the previous ROI must be replaced: a click outside it (max side exclusive, check_object_roi)
    or get_bbox_iou (product of the 1-D segment IoUs) below recompute_thresh_iou."""
    y, x = clicks[:, 0], clicks[:, 1]
    inside = (roi[0] <= y) & (y < roi[1]) & (roi[2] <= x) & (x < roi[3])
    outside = jnp.any(valid_click & ~inside)

    def seg(a, b, c, d):
        inter = jnp.maximum(0, jnp.minimum(b, d) - jnp.maximum(a, c) + 1)
        union = jnp.maximum(1, jnp.maximum(b, d) - jnp.minimum(a, c) + 1)
        return inter, union

    ir, ur = seg(new[0], new[1], roi[0], roi[1])
    ic, uc = seg(new[2], new[3], roi[2], roi[3])
    # exact: ir/ur * ic/uc < t  <=>  ir*ic < t*ur*uc (products < 2^24, exact in float32)
    low = (ir * ic).astype(jnp.float32) < jnp.float32(cfg.recompute_thresh_iou) * (ur * uc).astype(jnp.float32)
    return outside | low


def points_from_clicks(clicks, valid_click, ys, xs, n):
    """(2n, 3) float32 points: positives then negatives in click order as (y, x, click index), -1 padding."""
    pos = (clicks[:, 2] > 0) & valid_click
    neg = (clicks[:, 2] == 0) & valid_click
    slot = jnp.where(pos, jnp.cumsum(pos) - 1, jnp.where(neg, n + jnp.cumsum(neg) - 1, 2 * n))
    rows = jnp.stack([ys, xs, jnp.arange(clicks.shape[0], dtype=jnp.float32)], axis=1)
    return jnp.full((2 * n, 3), -1.0, jnp.float32).at[slot].set(rows, mode="drop")


# ------------------------------------------------------------------------------------------------
# the step

NetFn = Callable  # net(params, x (B, Hn, Wn, 4), points (B, 2N, 3), new_points (B, 1, 3), gate, geometry (4,)) -> dict


class NetInput(NamedTuple):
    """What the network of one click gets: x (B, Hn, Wn, 4) with the (zoomed) input in its top-left (h', w')
    corner and zeros elsewhere (B = 2 with the flip), points (B, 2N, 3), new_points (B, 1, 3), gate (), and
    geometry (4,) int32 = (h', w', FFCM half sizes) for the model's canvas mode."""
    x: jax.Array
    points: jax.Array
    new_points: jax.Array
    gate: jax.Array
    geometry: jax.Array


class Plan(NamedTuple):
    """What `finish_click` needs from `plan_click`: the clicks with the new one, the ROI after this click and
    whether there is one, the network input size (h', w')."""
    clicks: jax.Array
    roi: jax.Array
    has_roi: jax.Array
    net_hw: jax.Array


def plan_click(cfg: StepConfig, tables: StepTables, image, hw, state: ClickState, click):
    """The first half of `click_step`, up to the network: ZoomIn's box, the crop and its resize, the flip and
    the points. Returns (NetInput, Plan)."""
    dt = image.dtype
    hn, wn = cfg.net_canvas
    h, w = hw[0], hw[1]
    n = state.n_clicks
    clicks = state.clicks.at[n].set(click.astype(jnp.int32), mode="drop")
    n1 = n + 1
    valid_click = jnp.arange(cfg.max_clicks) < n1
    x_full = jnp.concatenate([image, state.probs[..., None].astype(dt)], axis=-1)      # (Hc, Wc, 4)

    roi, has_roi = state.roi, state.has_roi
    if cfg.zoom_in is not None:
        zmask = state.zmap > cfg.zoom_prob_thresh
        can = (n1 > cfg.skip_clicks) & state.has_zmap & jnp.any(zmask)
        new = _object_roi(tables, cfg, zmask, clicks, valid_click, hw)
        replace = ~has_roi | _keep_roi_fails(cfg, roi, new, clicks, valid_click)
        roi = jnp.where(can & replace, new, roi)
        has_roi = has_roi | can
        rh, rw = roi[1] - roi[0] + 1, roi[3] - roi[2] + 1
        zh = jnp.where(can, tables.zoom_h[rh, rw], h)
        zw = jnp.where(can, tables.zoom_w[rh, rw], w)
        off = jnp.where(can, roi[jnp.array([0, 2])], jnp.zeros(2, jnp.int32))
        src_h, src_w = jnp.where(can, rh, h), jnp.where(can, rw, w)
    else:
        zh, zw, off, src_h, src_w = h, w, jnp.zeros(2, jnp.int32), h, w
    # network input: the (zoomed) crop on the net canvas; identity taps when no zoom (weights exactly 1, 0)
    x_in = resize_window(x_full, off, (src_h, src_w), (zh, zw), (0, 0), (hn, wn))

    # clicks in net-input coordinates: p / q exact rationals (see module docstring)
    py = zh * (clicks[:, 0] - off[0])
    px = zw * (clicks[:, 1] - off[1])
    ys, xs = div_f32(py, src_h), div_f32(px, src_w)
    yi, xi = py // src_h, px // src_w
    pts = [points_from_clicks(clicks, valid_click, ys, xs, cfg.points_n)]
    new_pts = [jnp.stack([yi[n], xi[n], clicks[n, 2]])]
    batch = [x_in]
    if cfg.with_flip:
        pf = src_w * (zw - 1) - px                       # w' - 1 - x' = pf / src_w, > -src_w
        xf = div_f32(pf, src_w)
        xfi = jnp.where(pf >= 0, pf // src_w, 0)          # truncation toward zero (torch .long())
        pts.append(points_from_clicks(clicks, valid_click, ys, xf, cfg.points_n))
        new_pts.append(jnp.stack([yi[n], xfi[n], clicks[n, 2]]))
        batch.append(flip_window(x_in, zw))
    gate = jnp.where(n == 0, state.first_gate, jnp.float32(1.0))
    geometry = jnp.stack([zh, zw, tables.ffcm_half[zh], tables.ffcm_half[zw]]).astype(jnp.int32)
    net_in = NetInput(jnp.stack(batch), jnp.stack(pts), jnp.stack(new_pts)[:, None, :], gate, geometry)
    return net_in, Plan(clicks, roi, has_roi, jnp.stack([zh, zw]).astype(jnp.int32))


def finish_click(cfg: StepConfig, hw, state: ClickState, plan: Plan, out):
    """The second half of `click_step`, after the network: the flip merge, the sigmoid, the inverse resize into
    the ROI (prediction, uf1, uf2 in that order, so the next ROI comes from uf2), the threshold.

    out: the network's dict of (B, H', W', 1) maps on any canvas holding both the input (h', w') and the image
    canvas. Returns (new state, probs (Hc, Wc), mask (Hc, Wc) bool)."""
    dt = state.probs.dtype
    zh, zw = plan.net_hw[0], plan.net_hw[1]
    roi = plan.roi
    rh, rw = roi[1] - roi[0] + 1, roi[3] - roi[2] + 1
    hc, wc = cfg.image_canvas

    def merge(key):
        a = out[key][..., 0].astype(dt)
        return 0.5 * (a[0] + flip_window(a[1], zw)) if cfg.with_flip else a[0]

    def inverse(m):
        if cfg.zoom_in is None:
            return m[:hc, :wc]
        back = resize_window(m, (0, 0), (zh, zw), (rh, rw), (roi[0], roi[2]), cfg.image_canvas)
        return jnp.where(plan.has_roi, back, m[:hc, :wc])

    one = jnp.ones((), dt)
    probs = inverse(one / (one + jnp.exp(-merge("instances"))))
    uf1, uf2 = inverse(merge("updated_feedback1")), inverse(merge("updated_feedback2"))
    inside = (jnp.arange(hc)[:, None] < hw[0]) & (jnp.arange(wc)[None, :] < hw[1])
    mask = (probs > cfg.prob_thresh) & inside
    new_state = ClickState(probs=probs, uf1=uf1, uf2=uf2, zmap=uf2, has_zmap=jnp.bool_(cfg.zoom_in is not None),
                           roi=roi, has_roi=plan.has_roi, clicks=plan.clicks, n_clicks=state.n_clicks + 1,
                           first_gate=state.first_gate, net_hw=plan.net_hw)
    return new_state, probs, mask


def click_step(net: NetFn, cfg: StepConfig, params, tables: StepTables, image, hw, state: ClickState, click):
    """One click for ONE sample (vmap it for a batch); jit it with `net` and `cfg` static.

    image (Hc, Wc, 3) in [0, 1] (its dtype is the compute dtype), hw (2,) int32 valid size, click (3,) int32
    (y, x, is_positive) inside the valid region. Returns (new state, probs (Hc, Wc), mask (Hc, Wc) bool).
    `plan_click`, the network, `finish_click`: the interactive `Predictor` runs the same two halves as separate
    programs around a network call whose canvas it picks per click.
    """
    net_in, plan = plan_click(cfg, tables, image, hw, state, click)
    out = net(params, *net_in)
    return finish_click(cfg, hw, state, plan, out)


def model_net(graphdef, kernels):
    """`net` for `click_step` from an nnx graphdef: params = the model's nnx.State (canvas-mode forward),
    `kernels` an `ops.Kernels`."""
    from flax import nnx

    from fcfi_jax import ops

    def net(params, x, points, new_points, gate, geometry):
        m = ops.use_kernels(nnx.merge(graphdef, params), kernels)
        o = m(x, points, new_points, gate, canvas=geometry)
        return {k: o[k] for k in ("instances", "updated_feedback1", "updated_feedback2")}

    return net
