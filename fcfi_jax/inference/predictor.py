"""Interactive predictor: a session of clicks on one image, each click the device click step of `click_step`.

The network is a `CanvasRunner` or any callable with the fixed contract

    out = net(x, points, new_points, gate)
      x          float32 (B, H, W, 4) NHWC: RGB in [0, 1] and the previous-probability channel
      points     float32 (B, 2N, 3): rows (y, x, click_index), N positive rows then N negative rows,
                 padding (-1, -1, -1)
      new_points int32 (B, K, 3): (y, x, is_positive) of the newest K (= 1) clicks, coordinates truncated
                 toward zero (torch `.long()`), slot 0 = newest
      gate       Python float
      -> dict with 'instances' (logits), 'updated_feedback1', 'updated_feedback2', each (B, H, W, 1)

A click runs three device programs: `click_step.plan_click` (the official ZoomIn box, crop and resize, flip,
points), the network, and `click_step.finish_click` (flip merge, sigmoid, inverse resize, threshold): the step
that the lockstep evaluator fuses into one program, split where the host picks the network's canvas from the
input size (h', w'), the only values read back between the halves. A `CanvasRunner` takes the device arrays as
they are (its canvas buckets, ski rental and portrait transposition); another callable gets the inputs cut to
(h', w') as numpy arrays. The session state (`click_step.ClickState`) stays on the device; undo restores the
previous one. The same clicks give the official get_prediction's results (isegm/inference/predictors/base.py;
docs/official_quirks.md #23-#29): `HostPredictor` in tests/reference_predictor.py is its numpy reference, which
tests/test_predictor_host.py and tests/test_click_step.py check it against.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .click_step import StepConfig, finish_click, init_state, make_tables, plan_click, step_canvases
from .defaults import INTERACTIVE_CANVAS_STEP, POINTS_BUCKET, points_rows

# The two halves of the click step, compiled once per static config for every predictor of the process.
_PLAN = jax.jit(plan_click, static_argnums=0)
_FINISH = jax.jit(finish_click, static_argnums=0)


class Click(NamedTuple):
    y: int
    x: int
    is_positive: bool


def check_image(image):
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array of shape (H, W, 3) and dtype uint8 (RGB), "
                         f"got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be an RGB array of shape (H, W, 3), got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must have dtype uint8 (values 0..255), got {image.dtype}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image is empty: shape {image.shape}, expected H >= 1 and W >= 1")


def make_click(y, x, is_positive, hw) -> Click:
    """The Click at pixel (y, x) of an image of size hw, floats truncated as the official Click; a one-line
    error for non-numbers and points outside the image (NaN included)."""
    h, w = hw
    try:
        yf, xf = float(y), float(x)
    except (TypeError, ValueError):
        raise ValueError(f"click coordinates must be numbers, got y={y!r}, x={x!r}") from None
    if not (0 <= yf < h and 0 <= xf < w):
        raise ValueError(f"click (y={y}, x={x}) is outside the image: expected 0 <= y < {h} and 0 <= x < {w}")
    return Click(int(yf), int(xf), bool(is_positive))


def check_map(m, hw, name, dtype=np.float32):
    m = np.asarray(m)
    if m.shape != tuple(hw):
        raise ValueError(f"{name} must have the image's shape (H, W) = {tuple(hw)}, got {m.shape}")
    if m.dtype == bool or np.issubdtype(m.dtype, np.number):
        return m.astype(dtype)
    raise ValueError(f"{name} must be a boolean or numeric array, got dtype {m.dtype}")


class Predictor:
    """Interactive segmentation session around a network (see module docstring).

    zoom_in: (target_size, expansion_ratio) for the official ZoomIn (other ZoomIn parameters at their
    official defaults), or None. with_flip: horizontal-flip TTA, run as ONE net call with batch 2.
    prob_thresh: mask = probs > prob_thresh (0.49 official). max_points_bucket: N of the points tensor
    is rounded up to a multiple of it (1 gives the official N exactly). dtype: of the image, the maps and the
    network input ("float32"; "float64" with a float64 model and runner and JAX's float64 mode, for float64
    results end to end). max_undo: undo steps kept (None: all); each holds three maps of the image.
    """

    def __init__(self, net, zoom_in=None, with_flip=True, prob_thresh=0.49, max_points_bucket=POINTS_BUCKET,
                 dtype="float32", max_undo=None):
        if int(max_points_bucket) < 1:
            raise ValueError(f"max_points_bucket must be >= 1, got {max_points_bucket}")
        if np.dtype(dtype) not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
        if zoom_in is not None and not isinstance(zoom_in[0], (int, np.integer)):
            raise ValueError(f"zoom_in target size must be an int, got {zoom_in[0]!r}")
        if max_undo is not None and int(max_undo) < 0:
            raise ValueError(f"max_undo must be >= 0 or None, got {max_undo}")
        self.dtype = np.dtype(dtype)
        self.net = net
        self.zoom_in = (int(zoom_in[0]), float(zoom_in[1])) if zoom_in is not None else None
        self.with_flip = with_flip
        self.prob_thresh = prob_thresh
        self.max_points_bucket = int(max_points_bucket)
        self.max_undo = None if max_undo is None else int(max_undo)
        model = getattr(net, "model", None)
        # the FFCM box ratio of `make_tables`; the runner computes the model's geometry itself, another net none
        self._ffcm_ratio = model.feature_extractor.correction_module.expan_ratio if model is not None else 0.0
        self._tables = (None, None)
        self._image = None
        self._clear()

    # ---- interactive session ----------------------------------------------------------------

    def set_image(self, image, initial_mask=None):
        """Start a session on an RGB uint8 (H, W, 3) image; clears clicks, history and the ZoomIn state.

        initial_mask (optional, (H, W) bool or probabilities in [0, 1]) replaces the all-zero prev mask of
        the first click, which then runs with gate 1.0 (there is feedback to fuse). Not an official feature.
        """
        check_image(image)
        if self.dtype == np.float64 and not jax.config.jax_enable_x64:
            raise ValueError("Predictor(dtype='float64') needs JAX's float64 mode: "
                             "jax.config.update('jax_enable_x64', True) first")
        h, w = image.shape[:2]
        init = None
        if initial_mask is not None:
            init = check_map(initial_mask, (h, w), "initial_mask", self.dtype)
            if not np.all((init >= 0) & (init <= 1)):
                raise ValueError("initial_mask must hold values in [0, 1] (a mask or probabilities)")
        # The image canvas only holds maps (the network's canvas is the runner's choice): coarse buckets, so that
        # the two small programs of the step compile again for few image sizes.
        self._canvases = step_canvases((h, w), INTERACTIVE_CANVAS_STEP, self.zoom_in)
        canvas = np.zeros(self._canvases[0] + (3,), self.dtype)
        canvas[:h, :w] = image.astype(self.dtype) / self.dtype.type(255)   # torchvision ToTensor
        self._image = jnp.asarray(canvas)
        self._hw = (h, w)
        self._init = None
        if init is not None:
            self._init = np.zeros(self._canvases[0], self.dtype)
            self._init[:h, :w] = init
        self._clear()

    def add_click(self, y, x, is_positive):
        """Add a click at pixel (y, x) (row, column) and predict: returns (mask bool (H, W), probs float32)."""
        if self._image is None:
            raise RuntimeError("no image: call set_image(image) first")
        clicks = self._clicks + [make_click(y, x, is_positive, self._hw)]

        cfg = self._config(clicks)
        state = self._state
        if state.clicks.shape[0] < cfg.max_clicks:   # more click slots (the program compiles again, rarely)
            state = state._replace(clicks=jnp.pad(state.clicks, ((0, cfg.max_clicks - state.clicks.shape[0]), (0, 0)),
                                                  constant_values=-1))
        hw = jnp.asarray(self._hw, jnp.int32)
        net_in, plan = _PLAN(cfg, self._tables_for(cfg), self._image, hw, state, jnp.asarray(clicks[-1], jnp.int32))
        zh, zw = (int(v) for v in np.asarray(plan.net_hw))
        out = self._network(net_in, (zh, zw))
        new_state, _, _ = _FINISH(cfg, hw, state, plan, out)

        self._history.append((self._state, self._clicks))   # the device state only: 3 maps of the image canvas
        if self.max_undo is not None and len(self._history) > self.max_undo:
            del self._history[:len(self._history) - self.max_undo]
        self._state, self._clicks, self._host = new_state, clicks, {}
        return self.mask, self.probs

    def undo(self):
        """Remove the last click, restoring probabilities, feedbacks and ZoomIn state exactly; no-op without clicks."""
        if self._history:
            (self._state, self._clicks), self._host = self._history.pop(), {}

    def reset(self):
        """Remove all clicks (keeps the image)."""
        self._clear()

    # ---- state ----------------------------------------------------------------------------

    @property
    def undo_steps(self) -> int:
        """How many clicks `undo` can still remove (at most max_undo)."""
        return len(self._history)

    @property
    def clicks(self):
        """Tuple of Click(y, x, is_positive) in order."""
        return tuple(self._clicks)

    @property
    def probs(self):
        """(H, W) float32 probabilities after the last click (initial mask or zeros before any click)."""
        return None if self._image is None else self._map("probs")

    @property
    def mask(self):
        """(H, W) bool: probs > prob_thresh."""
        return None if self._image is None else self.probs > self.prob_thresh

    @property
    def uf1(self):
        return self._map("uf1") if self._clicks else None

    @property
    def uf2(self):
        return self._map("uf2") if self._clicks else None

    @property
    def roi(self):
        """ZoomIn's current ROI (rmin, rmax, cmin, cmax), inclusive, or None (also stale, see ZoomIn)."""
        if self.zoom_in is None or not self._clicks or not bool(self._state.has_roi):
            return None
        return tuple(int(v) for v in np.asarray(self._state.roi))

    @property
    def net_input_shape(self):
        """(B, H', W', 4) of the last network call, or None."""
        if not self._clicks:
            return None
        zh, zw = (int(v) for v in np.asarray(self._state.net_hw))
        return (2 if self.with_flip else 1, zh, zw, 4)

    @staticmethod
    def step_compilations() -> int:
        """Programs XLA compiled so far in this process for the two halves of the step, shared by all predictors
        (one pair per image canvas, click-slot and points bucket); the network's are the runner's."""
        return _PLAN._cache_size() + _FINISH._cache_size()

    # ---- internals --------------------------------------------------------------------------

    def _clear(self):
        self._clicks, self._history, self._host = [], [], {}
        self._state = None
        if self._image is not None:
            self._state = init_state(self._config([]), self.dtype, self._init)

    def _config(self, clicks) -> StepConfig:
        """The step's static settings for these clicks: N of the points tensor as the official get_points_nd
        (bucketed), click slots in steps of POINTS_BUCKET."""
        n = max(1, sum(c.is_positive for c in clicks), sum(not c.is_positive for c in clicks))
        return StepConfig(image_canvas=self._canvases[0], net_canvas=self._canvases[1], zoom_in=self.zoom_in,
                          with_flip=self.with_flip, prob_thresh=self.prob_thresh, max_clicks=points_rows(len(clicks)),
                          points_n=-(-n // self.max_points_bucket) * self.max_points_bucket)

    def _tables_for(self, cfg):
        """`make_tables` for the canvases of `cfg`, kept for the last pair."""
        key = (cfg.image_canvas, cfg.net_canvas, cfg.zoom_in)
        if self._tables[0] != key:
            self._tables = (key, make_tables(cfg, self._ffcm_ratio))
        return self._tables[1]

    def _network(self, net_in, hw):
        """The network's outputs on the canvas of `net_in.x`, from a CanvasRunner or any net callable."""
        run_canvas = getattr(self.net, "run_canvas", None)
        if run_canvas is not None:
            return run_canvas(net_in.x, net_in.points, net_in.new_points, net_in.gate, hw)
        (h, w), (b, hn, wn, _) = hw, net_in.x.shape
        x = np.ascontiguousarray(np.asarray(net_in.x)[:, :h, :w])
        out = self.net(x, np.asarray(net_in.points), np.asarray(net_in.new_points), float(net_in.gate))
        res = {}
        for k in ("instances", "updated_feedback1", "updated_feedback2"):
            a = np.asarray(out[k], self.dtype)
            if a.shape != (b, h, w, 1):
                raise ValueError(f"the network's {k!r} has shape {a.shape}, expected (B, H, W, 1) = {(b, h, w, 1)}")
            res[k] = jnp.asarray(np.pad(a, ((0, 0), (0, hn - h), (0, wn - w), (0, 0))))
        return res

    def _map(self, name):
        """A state map cut to the image, as a numpy array (fetched once per click)."""
        if name not in self._host:
            h, w = self._hw
            self._host[name] = np.array(np.asarray(getattr(self._state, name))[:h, :w])
        return self._host[name]
