"""The numpy reference of the interactive predictor, an oracle for the tests: the official BasePredictor (NoBRS)
step with ZoomIn and the horizontal flip, written as the official code does it, around any network callable.

`fcfi_jax.inference.predictor.Predictor` runs the same session on the device (`fcfi_jax/inference/click_step.py`);
tests/test_predictor_host.py checks this file against PyTorch's resize and the official evaluation records, and
tests/test_click_step.py the device step against it (float64: 1e-12).

- `resize_ac`: bilinear resize with align_corners=True, numerically matching PyTorch's CPU float32 kernel.
- `flip_w`, `flip_clicks`: the horizontal-flip test-time augmentation (official AddHorizontalFlip).
- `ZoomIn`: the official zoom-in transform (isegm/inference/transforms/zoom_in.py + isegm/utils/misc.py),
  quirks included (docs/official_quirks.md #26-#29).
- `HostPredictor`: get_prediction of isegm/inference/predictors/base.py (docs/official_quirks.md #24-#26), and
  `set_image`/`add_click`/`undo`/`reset` with the session semantic of the official evaluate_sample
  (docs/official_quirks.md #23): first click with a zero prev mask and gate 0, later clicks with the previous
  probabilities and gate 1.

Images and maps are (H, W) or (H, W, C) float32 arrays; clicks are (y, x, is_positive) triples.
"""
import numpy as np

from fcfi_jax.inference.defaults import POINTS_BUCKET
from fcfi_jax.inference.predictor import check_image, check_map, make_click

# ----------------------------------------------------------------------------------------------
# Align-corners bilinear resize

def ac_taps(n_out: int, n_in: int, dtype=np.float32):
    """Two-tap form of torch bilinear align_corners=True along one axis: (i0, i1, lambda0, lambda1), each (n_out,).

    Follows PyTorch's CPU float math in the map's dtype (float32, or float64 in the float64 mode):
    scale = dtype(n_in - 1) / (n_out - 1) (0 when n_out == 1), src = dst * scale, i0 = floor(src),
    i1 = min(i0 + 1, n_in - 1), lambda = src - i0.
    """
    if n_out < 1 or n_in < 1:
        raise ValueError(f"resize sizes must be positive, got {n_in} -> {n_out}")
    f = np.dtype(dtype).type
    scale = f(n_in - 1) / f(n_out - 1) if n_out > 1 else f(0.0)
    src = np.arange(n_out, dtype=dtype) * scale
    i0 = np.minimum(src.astype(np.int64), n_in - 1)  # truncation == floor, src >= 0
    i1 = np.minimum(i0 + 1, n_in - 1)
    lam1 = np.clip(src - i0.astype(dtype), f(0), f(1))
    lam0 = f(1) - lam1
    return i0, i1, lam0, lam1


def float_map(x) -> np.ndarray:
    """x as a float array: float64 stays float64 (the float64 mode), anything else becomes float32."""
    x = np.asarray(x)
    return x if x.dtype == np.float64 else x.astype(np.float32, copy=False)


def _lerp(a, axis: int, taps) -> np.ndarray:
    """w0 * a[i0] + w1 * a[i1] along `axis` with np.take and in-place products (the same float operations as
    fancy indexing, 2-3x faster on the (H, W, 4) zoom-in crops: ~11 instead of ~25-35 ms per click)."""
    i0, i1, w0, w1 = taps
    shape = [1] * a.ndim
    shape[axis] = -1
    y = np.take(a, i0, axis=axis)
    y *= w0.reshape(shape)
    t = np.take(a, i1, axis=axis)
    t *= w1.reshape(shape)
    y += t
    return y


def resize_ac(x, size) -> np.ndarray:
    """Resize axes 0 and 1 of an (H, W) or (H, W, C) array to `size` = (h, w), as
    torch.nn.functional.interpolate(mode='bilinear', align_corners=True) does, in float32 (float64 for float64
    maps).

    Columns then rows, each as a two-tap gather and lerp, i.e. l0 * (m0 * x00 + m1 * x01) + l1 * (m0 * x10 +
    m1 * x11), PyTorch's CPU evaluation order (73% of outputs bit-equal to torch, the rest within 1 ulp). The
    dense interpolation matrices it replaces took ~90 ms of host time per zoomed click.
    """
    x = float_map(x)
    (h, w), (oh, ow) = x.shape[:2], (int(size[0]), int(size[1]))
    if (h, w) == (oh, ow):
        return x  # the align-corners weights are the identity then
    return _lerp(_lerp(x, 1, ac_taps(ow, w, x.dtype)), 0, ac_taps(oh, h, x.dtype))


# ----------------------------------------------------------------------------------------------
# Horizontal flip

def flip_w(x) -> np.ndarray:
    """Mirror an (H, W, ...) array along W."""
    return np.asarray(x)[:, ::-1]


def flip_clicks(clicks, width: int) -> list:
    """Clicks of the W-mirrored image: (y, width - 1 - x) (official AddHorizontalFlip)."""
    return [(y, width - x - 1, p) for y, x, p in clicks]


# ----------------------------------------------------------------------------------------------
# ROI helpers (isegm/utils/misc.py semantics)

def bbox_from_mask(mask):
    """Inclusive (rmin, rmax, cmin, cmax) of the True pixels of a non-empty 2-D mask."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])


def expand_bbox(bbox, ratio, min_size):
    """Scale a box about its centre by `ratio` (each side at least `min_size`).

    Bounds use Python's round (round-half-to-even), e.g. 184.5 -> 184, -15.5 -> -16, as the official code.
    """
    rmin, rmax, cmin, cmax = bbox
    rc, cc = 0.5 * (rmin + rmax), 0.5 * (cmin + cmax)
    h = max(ratio * (rmax - rmin + 1), min_size)
    w = max(ratio * (cmax - cmin + 1), min_size)
    return round(rc - 0.5 * h), round(rc + 0.5 * h), round(cc - 0.5 * w), round(cc + 0.5 * w)


def clamp_bbox(bbox, h, w):
    """Clip an inclusive box to [0, h-1] x [0, w-1]."""
    rmin, rmax, cmin, cmax = bbox
    return max(0, rmin), min(h - 1, rmax), max(0, cmin), min(w - 1, cmax)


def object_roi(pred_mask, clicks, ratio, min_size):
    """Official get_object_roi: box of the mask with ALL clicks (positive AND negative; RITM used only
    positives) set, expanded and clamped to the image."""
    mask = np.array(pred_mask, dtype=bool)
    for y, x, _ in clicks:
        mask[int(y), int(x)] = True
    bbox = expand_bbox(bbox_from_mask(mask), ratio, min_size)
    return clamp_bbox(bbox, *mask.shape)


def segments_iou(s1, s2):
    """IoU of two inclusive integer segments (a, b), (c, d)."""
    (a, b), (c, d) = s1, s2
    inter = max(0, min(b, d) - max(a, c) + 1)
    union = max(1e-6, max(b, d) - min(a, c) + 1)
    return inter / union


def bbox_iou(b1, b2):
    """Official get_bbox_iou: the PRODUCT of the row and column segment IoUs (not a true box IoU)."""
    return segments_iou(b1[:2], b2[:2]) * segments_iou(b1[2:], b2[2:])


def clicks_inside(roi, clicks):
    """Official check_object_roi: every click inside the ROI, with the max side treated as EXCLUSIVE."""
    rmin, rmax, cmin, cmax = roi
    return all(rmin <= y < rmax and cmin <= x < cmax for y, x, _ in clicks)


def zoomed_size(roi, target_size):
    """Network-input (h', w') of an ROI: (round(h*s), round(w*s)), s = target / max(h, w); or the
    fixed (h', w') when target_size is a tuple."""
    if isinstance(target_size, tuple):
        return int(target_size[0]), int(target_size[1])
    h, w = roi[1] - roi[0] + 1, roi[3] - roi[2] + 1
    s = target_size / max(h, w)
    return int(round(h * s)), int(round(w * s))


# ----------------------------------------------------------------------------------------------
# ZoomIn

class ZoomIn:
    """The official ZoomIn transform (stateful: current ROI and the last inverse-transformed map).

    transform(x, clicks): from the stored map (> prob_thresh, with every click pixel added) compute an ROI;
    keep the previous ROI unless a click is outside it (max side exclusive) or the 1-D-IoU product
    with the new one is < recompute_thresh_iou; crop x to the ROI and AC-resize it to zoomed_size; remap
    clicks y' = h' * (y - rmin) / h. No zoom while len(clicks) <= skip_clicks or when the stored map is
    empty; in the latter case the OLD ROI is kept (stale-ROI quirk, docs/official_quirks.md #29) and `inverse`
    squeezes the full-image output into it.
    inverse(map): AC-resize back to the ROI size and paste into zeros; EVERY call overwrites the stored
    map, so with prediction, uf1, uf2 inverted in that order the next ROI comes from uf2.
    Not reproduced: check_possible_recalculation (only reachable with skip_clicks == 0, where the official
    recursive call is broken).
    """

    def __init__(self, target_size, expansion_ratio, skip_clicks=1, min_crop_size=200,
                 recompute_thresh_iou=0.5, prob_thresh=0.5):
        self.target_size = target_size
        self.expansion_ratio = expansion_ratio
        self.skip_clicks = skip_clicks
        self.min_crop_size = min_crop_size
        self.recompute_thresh_iou = recompute_thresh_iou
        self.prob_thresh = prob_thresh
        self.reset()

    def reset(self):
        """Forget the ROI and the stored map (new image)."""
        self.roi = None          # (rmin, rmax, cmin, cmax) inclusive, or None
        self.prev_probs = None   # (H, W) float32 map stored by the last `inverse`
        self.input_hw = None     # (h, w) of the last `transform` output (what the network saw)

    def get_state(self):
        """Snapshot for undo (arrays are never modified in place, so no copies are needed)."""
        return self.roi, self.prev_probs, self.input_hw

    def set_state(self, state):
        self.roi, self.prev_probs, self.input_hw = state

    def transform(self, x, clicks):
        """x (H, W, C) float32 (or float64) and clicks in image coordinates -> (network input, remapped clicks)."""
        x = float_map(x)
        clicks = list(clicks)
        self.input_hw = x.shape[:2]
        if len(clicks) <= self.skip_clicks:
            return x, clicks

        roi = None
        if self.prev_probs is not None:
            mask = self.prev_probs > self.prob_thresh
            if mask.any():
                roi = object_roi(mask, clicks, self.expansion_ratio, self.min_crop_size)
        if roi is None:
            if self.skip_clicks >= 0:
                return x, clicks  # stale-ROI quirk: self.roi is NOT cleared
            roi = (0, x.shape[0] - 1, 0, x.shape[1] - 1)

        if (self.roi is None or not clicks_inside(self.roi, clicks)
                or bbox_iou(roi, self.roi) < self.recompute_thresh_iou):
            self.roi = roi

        rmin, rmax, cmin, cmax = self.roi
        h, w = rmax - rmin + 1, cmax - cmin + 1
        nh, nw = zoomed_size(self.roi, self.target_size)
        out = resize_ac(x[rmin:rmax + 1, cmin:cmax + 1], (nh, nw))
        self.input_hw = (nh, nw)
        # float64 Python arithmetic, product first, as the official code
        return out, [(nh * (y - rmin) / h, nw * (xx - cmin) / w, p) for y, xx, p in clicks]

    def inverse(self, prob_map):
        """Network-input-sized (h', w') map -> full-image map; stores the result (see class doc)."""
        prob_map = float_map(prob_map)
        if self.roi is not None:
            rmin, rmax, cmin, cmax = self.roi
            part = resize_ac(prob_map, (rmax - rmin + 1, cmax - cmin + 1))
            if self.prev_probs is not None:
                prob_map = np.zeros(self.prev_probs.shape, prob_map.dtype)
                prob_map[rmin:rmax + 1, cmin:cmax + 1] = part
            else:
                prob_map = part
        self.prev_probs = prob_map
        return prob_map


# ----------------------------------------------------------------------------------------------
# The session

def sigmoid(x, dtype=np.float32):
    """Logistic function in `dtype` (float32, or float64 in the float64 mode); exp overflow for very negative
    logits gives the exact limit 0."""
    f = np.dtype(dtype).type
    with np.errstate(over="ignore"):
        return (f(1) / (f(1) + np.exp(-np.asarray(x, dtype)))).astype(dtype)


def points_array(clicks_lists, bucket: int = 1) -> np.ndarray:
    """(B, 2N, 3) float32 points: per list, positives then negatives as (y, x, index), -1 padded.

    N = max(1, max #pos / #neg over the batch) as the official get_points_nd, rounded up to a multiple of
    `bucket` so that adding clicks rarely changes the shape (padding rows are ignored by the network).
    """
    n = max([1] + [sum(1 for c in cl if c[2]) for cl in clicks_lists]
            + [sum(1 for c in cl if not c[2]) for cl in clicks_lists])
    n = -(-n // bucket) * bucket
    out = np.full((len(clicks_lists), 2 * n, 3), -1.0, np.float64)
    for b, cl in enumerate(clicks_lists):
        pos = [(y, x, i) for i, (y, x, p) in enumerate(cl) if p]
        neg = [(y, x, i) for i, (y, x, p) in enumerate(cl) if not p]
        if pos:
            out[b, :len(pos)] = pos
        if neg:
            out[b, n:n + len(neg)] = neg
    return out.astype(np.float32)  # values computed in float64 (Python), rounded once


def new_points_array(clicks_lists, k: int = 1) -> np.ndarray:
    """(B, k, 3) int32: the last k clicks of each list, newest first, (int(y), int(x), is_positive).

    int() truncates toward zero like torch `.long()` (a flipped coordinate in (-1, 0) becomes 0).
    """
    return np.array([[(int(cl[-1 - j][0]), int(cl[-1 - j][1]), int(bool(cl[-1 - j][2]))) for j in range(k)]
                     for cl in clicks_lists], np.int32)


class HostPredictor:
    """Interactive segmentation session around a network callable, in numpy (see module docstring).

    zoom_in: (target_size, expansion_ratio) for the official ZoomIn (other ZoomIn parameters at their
    official defaults), or None. with_flip: horizontal-flip TTA, run as ONE net call with batch 2.
    prob_thresh: mask = probs > prob_thresh (0.49 official). max_points_bucket: N of the points tensor
    is rounded up to a multiple of it (1 gives the official N exactly). dtype: of the image, the maps and the
    network input ("float32"; "float64" with a float64 model and runner, for float64 results end to end).
    """

    def __init__(self, net, zoom_in=None, with_flip=True, prob_thresh=0.49, max_points_bucket=POINTS_BUCKET, dtype="float32"):
        if int(max_points_bucket) < 1:
            raise ValueError(f"max_points_bucket must be >= 1, got {max_points_bucket}")
        if np.dtype(dtype) not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
        self.dtype = np.dtype(dtype)
        self.net = net
        self.zoom_in = tuple(zoom_in) if zoom_in is not None else None
        self.zoom = ZoomIn(*zoom_in) if zoom_in is not None else None
        self.with_flip = with_flip
        self.prob_thresh = prob_thresh
        self.max_points_bucket = int(max_points_bucket)
        self._image = None
        self._init_mask = None
        self._clear()

    # ---- official single-step prediction ---------------------------------------------------

    def get_prediction(self, clicks, prev_mask, gate):
        """One official predictor step: (probs, uf1, uf2), each (H, W) float32 at image resolution.

        clicks: all clicks so far (y, x, is_positive) in image coordinates (indices = list order);
        prev_mask: (H, W) previous probabilities (or zeros); gate: float. Updates the ZoomIn state.
        """
        if self._image is None:
            raise RuntimeError("no image: call set_image(image) first")
        clicks = list(clicks)
        if not clicks:
            raise ValueError("get_prediction needs at least one click")
        prev = check_map(prev_mask, self._image.shape[:2], "prev_mask", self.dtype)
        x = np.concatenate([self._image, prev[..., None]], axis=-1)   # (H, W, 4)

        if self.zoom is not None:
            x, clicks = self.zoom.transform(x, clicks)
        if self.with_flip:
            batch = np.stack([x, flip_w(x)])
            lists = [clicks, flip_clicks(clicks, x.shape[1])]
        else:
            batch, lists = x[None], [clicks]
        batch = np.ascontiguousarray(batch, self.dtype)
        self._net_input_shape = batch.shape

        out = self.net(batch, points_array(lists, self.max_points_bucket), new_points_array(lists), float(gate))

        def merge(key):
            """Network output -> (h', w') map at the net-input size, flip TTA averaged."""
            a = np.asarray(out[key], self.dtype)[..., 0]
            if a.shape[1:] != x.shape[:2]:
                a = np.stack([resize_ac(m, x.shape[:2]) for m in a])
            return 0.5 * (a[0] + a[1][:, ::-1]) if self.with_flip else a[0]

        # Inverse transforms in the official order: flip, sigmoid (prediction only), then ZoomIn for
        # prediction, uf1, uf2 -- the ZoomIn's stored map therefore ends up being uf2.
        probs, uf1, uf2 = sigmoid(merge("instances"), self.dtype), merge("updated_feedback1"), merge("updated_feedback2")
        if self.zoom is not None:
            probs, uf1, uf2 = self.zoom.inverse(probs), self.zoom.inverse(uf1), self.zoom.inverse(uf2)
        return probs, uf1, uf2

    # ---- interactive session ----------------------------------------------------------------

    def set_image(self, image, initial_mask=None):
        """Start a session on an RGB uint8 (H, W, 3) image; clears clicks, history and the ZoomIn state.

        initial_mask (optional, (H, W) bool or probabilities in [0, 1]) replaces the all-zero prev mask of
        the first click, which then runs with gate 1.0 (there is feedback to fuse). Not an official feature.
        """
        check_image(image)
        init = None
        if initial_mask is not None:
            init = check_map(initial_mask, image.shape[:2], "initial_mask", self.dtype)
            if not np.all((init >= 0) & (init <= 1)):
                raise ValueError("initial_mask must hold values in [0, 1] (a mask or probabilities)")
        self._image = image.astype(self.dtype) / self.dtype.type(255)   # torchvision ToTensor
        self._init_mask = init
        self._clear()

    def add_click(self, y, x, is_positive):
        """Add a click at pixel (y, x) (row, column) and predict: returns (mask bool (H, W), probs float32)."""
        if self._image is None:
            raise RuntimeError("no image: call set_image(image) first")
        h, w = self._image.shape[:2]
        click = make_click(y, x, is_positive, (h, w))

        self._history.append(self._state())
        first = not self._clicks
        if first:
            prev = self._init_mask if self._init_mask is not None else np.zeros((h, w), self.dtype)
            gate = 0.0 if self._init_mask is None else 1.0
        else:
            prev, gate = self._probs, 1.0
        try:
            probs, uf1, uf2 = self.get_prediction(self._clicks + [click], prev, gate)
        except BaseException:
            self._restore(self._history.pop())
            raise
        self._clicks.append(click)
        self._probs, self._uf1, self._uf2 = probs, uf1, uf2
        return self.mask, probs

    def undo(self):
        """Remove the last click, restoring probabilities, feedbacks and ZoomIn state exactly; no-op without clicks."""
        if self._history:
            self._restore(self._history.pop())

    def reset(self):
        """Remove all clicks (keeps the image)."""
        self._clear()

    # ---- state ----------------------------------------------------------------------------

    @property
    def clicks(self):
        """Tuple of Click(y, x, is_positive) in order."""
        return tuple(self._clicks)

    @property
    def probs(self):
        """(H, W) float32 probabilities after the last click (initial mask or zeros before any click)."""
        return self._probs

    @property
    def mask(self):
        """(H, W) bool: probs > prob_thresh."""
        return None if self._probs is None else self._probs > self.prob_thresh

    @property
    def uf1(self):
        return self._uf1

    @property
    def uf2(self):
        return self._uf2

    @property
    def roi(self):
        """ZoomIn's current ROI (rmin, rmax, cmin, cmax), inclusive, or None (also stale, see ZoomIn)."""
        return None if self.zoom is None else self.zoom.roi

    @property
    def net_input_shape(self):
        """(B, H', W', 4) of the last network call, or None."""
        return self._net_input_shape

    def _clear(self):
        self._clicks, self._history = [], []
        self._uf1 = self._uf2 = None
        self._net_input_shape = None
        self._probs = None
        if self._image is not None:
            self._probs = (self._init_mask if self._init_mask is not None
                           else np.zeros(self._image.shape[:2], self.dtype))
        if self.zoom is not None:
            self.zoom.reset()

    def _state(self):
        zoom = self.zoom.get_state() if self.zoom is not None else None
        return list(self._clicks), self._probs, self._uf1, self._uf2, self._net_input_shape, zoom

    def _restore(self, state):
        clicks, self._probs, self._uf1, self._uf2, self._net_input_shape, zoom = state
        self._clicks = list(clicks)
        if self.zoom is not None:
            self.zoom.set_state(zoom)
