"""`HostPredictor`: the official BasePredictor (NoBRS) step in numpy around any network callable.

The numpy reference of `fcfi_jax.inference.predictor.Predictor` (which runs the same step on the device, see
`click_step`): the tests check the device step against it, and it drives networks that are not a `CanvasRunner`
(an ONNX session, a stand-in network) with the network contract of `fcfi_jax.inference.predictor`.

`HostPredictor.get_prediction` reproduces isegm/inference/predictors/base.py get_prediction (docs/official_quirks.md
#24-#26); `set_image`/`add_click`/`undo`/`reset` wrap it into the session semantic of the official evaluate_sample
(docs/official_quirks.md #23): first click with a zero prev mask and gate 0, later clicks with the previous
probabilities and gate 1.
"""

import numpy as np

from .defaults import POINTS_BUCKET
from .predictor import Click, check_image, check_map
from .transforms import ZoomIn, flip_clicks, flip_w, resize_ac


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
        try:
            yf, xf = float(y), float(x)
        except (TypeError, ValueError):
            raise ValueError(f"click coordinates must be numbers, got y={y!r}, x={x!r}") from None
        if not (0 <= yf < h and 0 <= xf < w):
            raise ValueError(f"click (y={y}, x={x}) is outside the image: expected 0 <= y < {h} and 0 <= x < {w}")
        click = Click(int(yf), int(xf), bool(is_positive))   # like the official Click: floats truncated

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
