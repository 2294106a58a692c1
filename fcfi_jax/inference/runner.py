"""Compiled network calls for the predictor: one XLA program per canvas bucket, not per input size.

Zoom-in changes the network input size from click to click. `CanvasRunner` pads every input into
the top-left corner of a zero canvas (sizes rounded up to `step`) and passes the true size as a
traced value, with the valid-region masks of its resolution levels computed here on the host (they make the
compilation faster: see `layers.Canvas`); the model keeps everything outside the valid region at zero
after every layer, so the result equals the exact-size forward (see `ISModel.__call__(canvas=...)`). Compilations are
bounded by the number of distinct canvases; the click count never recompiles (points are
bucketed by the predictor). A portrait input runs transposed on the landscape canvas, with every
k x k kernel transposed too: the network has no preferred axis (square kernels, symmetric strides and
paddings, separable resizes, a per-axis FFCM box), so the output is the transpose of the portrait forward
up to float summation order, and 525x700 and 700x525 zoom-ins share one compilation. JAX's persistent
compilation cache makes a second process compile nothing: `enable_compilation_cache(dir)`.

A size whose own canvas is not compiled yet may instead run on the smallest larger canvas that is (the result
is the same: the canvas only adds zero padding). Compiling costs about as much as forwarding millions of
pixels, so the runner rents the larger canvas and pays for its own only once the pixels wasted on it add up to
that cost (the ski-rental rule: never more than twice the better choice in hindsight). On GrabCut this runs
the 6 sizes met by a single first click on larger canvases and compiles 5 canvases instead of 15. The rule
counts pixels, not seconds, so which canvas serves a call depends only on the sequence of inputs.
"""
from __future__ import annotations

import functools
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fcfi_jax import ops
from fcfi_jax.inference.defaults import INTERACTIVE_CANVAS_STEP
from fcfi_jax.models.layers import accum_dtype, canvas_level_masks


def enable_compilation_cache(directory: str | None = None) -> str:
    """Turn on JAX's persistent compilation cache (default ~/.cache/fcfi_jax/xla)."""
    directory = directory or os.environ.get("FCFI_JAX_CACHE", os.path.expanduser("~/.cache/fcfi_jax/xla"))
    os.makedirs(directory, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return directory


def default_compile_cost_mpx() -> float:
    """One compilation in Mpx forwarded: on the 2-core CPU of this project a compilation takes ~15 s and the
    HRNet18s forward runs ~0.55 Mpx/s (8); a GPU/TPU forwards ~100x faster while compiling as slowly (1000)."""
    return 8.0 if jax.default_backend() == "cpu" else 1000.0


def canvas_size(h: int, w: int, step: int) -> tuple[int, int]:
    """Smallest canvas of multiples of `step` holding an h x w input."""
    return int(math.ceil(h / step) * step), int(math.ceil(w / step) * step)


@functools.partial(jax.jit, static_argnums=1)
def _fit(a, hw):
    """a (B, H, W, C) cut or zero-padded at the bottom and right to (B, hw[0], hw[1], C)."""
    a = a[:, :hw[0], :hw[1]]
    return jnp.pad(a, ((0, 0), (0, hw[0] - a.shape[1]), (0, hw[1] - a.shape[2]), (0, 0)))


@functools.lru_cache(maxsize=32)
def _level_masks(canvas_hw, true_hw):
    """`canvas_level_masks`, kept for the sizes met last (read-only)."""
    masks = canvas_level_masks(canvas_hw, true_hw)
    for m in masks:
        m.flags.writeable = False
    return masks


class CanvasRunner:
    """`net(x, points, new_points, gate)` for `fcfi_jax.inference.predictor.Predictor`.

    x (B, H, W, 4) float32, points (B, 2N, 3), new_points (B, K, 3) int; returns numpy dict with
    `instances`, `updated_feedback1`, `updated_feedback2` of shape (B, H, W, 1).
    step=None runs every input at its exact size (one compilation per size, as the official code).
    transpose_portrait: run H > W inputs transposed (with transposed kernels) on the W x H canvas.
    compile_cost_mpx: what one compilation costs, in millions of pixels forwarded (batch elements counted);
    a size keeps running on a larger compiled canvas until the pixels it wasted there exceed this. None picks
    the backend's default (`default_compile_cost_mpx`), 0 always compiles the size's own canvas.
    kernels: the `fcfi_jax.ops.Kernels` of the forwards (default `ops.for_backend()`: the CPU forms and the direct
    3x3 kernel on CPU, the reference layers on GPU/TPU).
    """

    OUTPUTS = ("instances", "updated_feedback1", "updated_feedback2")

    def __init__(self, model, step: int | None = INTERACTIVE_CANVAS_STEP, dtype=jnp.float32, transpose_portrait: bool = True,
                 compile_cost_mpx: float | None = None, kernels: ops.Kernels | None = None):
        self.model = model
        self.step = step
        self.dtype = dtype
        # bfloat16 outputs come back as float32; float64 (the float64 mode) stays float64
        self.out_dtype = accum_dtype(dtype)
        self.in_dtype = np.float64 if jnp.dtype(dtype) == jnp.float64 else np.float32
        self.transpose_portrait = transpose_portrait and step is not None
        self.compile_cost_mpx = default_compile_cost_mpx() if compile_cost_mpx is None else compile_cost_mpx
        self.kernels = ops.for_backend() if kernels is None else kernels  # resolved once, here
        self.graphdef, state = nnx.split(model)
        self._treedef = jax.tree.structure(state)
        self.state = state  # also sets the flat weights the compiled forward takes
        self.canvases: set = set()  # the compiled canvases: (B, H, W, points shape, new_points shape)
        self._wasted_mpx: dict = {}  # canvas not compiled -> Mpx its inputs wasted on larger canvases so far
        self.reused_calls = 0  # calls served by a larger canvas than their own
        self.compile_count = 0
        self.model_seconds = 0.0
        self.first_call_seconds = 0.0  # calls that met a new canvas: compilation + one forward

        # The forwards take the weights as a flat list of arrays: flattening the nnx.State (~1,600
        # Variables) on every call cost ~7 ms of host time per click.
        def forward(leaves, x, points, new_points, gate, geometry, masks):
            m = ops.use_kernels(nnx.merge(self.graphdef, jax.tree.unflatten(self._treedef, leaves)), self.kernels)
            out = m(x.astype(self.dtype), points, new_points, gate, canvas=geometry, canvas_masks=masks)
            return {k: out[k].astype(self.out_dtype) for k in self.OUTPUTS}

        def forward_exact(leaves, x, points, new_points, gate):
            m = ops.use_kernels(nnx.merge(self.graphdef, jax.tree.unflatten(self._treedef, leaves)), self.kernels)
            out = m(x.astype(self.dtype), points, new_points, gate)
            return {k: out[k].astype(self.out_dtype) for k in self.OUTPUTS}

        from fcfi_jax.xla_options import compiler_options

        opts = compiler_options()
        self._forward = jax.jit(forward, compiler_options=opts)
        self._forward_exact = jax.jit(forward_exact, compiler_options=opts)

    @property
    def state(self):
        """The model's nnx.State; assigning new weights (same structure) also drops the transposed copy."""
        return self._state

    @state.setter
    def state(self, state):
        if jax.tree.structure(state) != self._treedef:
            raise ValueError("CanvasRunner.state: the new weights do not have the structure of the model's state "
                             "(build a new CanvasRunner for another model)")
        self._state = state
        self._leaves = jax.tree.leaves(state)
        self._leaves_t = None  # the transposed-kernel weights, made on the first portrait input

    @property
    def xla_compilations(self) -> int:
        """Programs XLA actually compiled for this runner (jit cache entries)."""
        return self._forward._cache_size() + self._forward_exact._cache_size()

    def compiled(self, x_shape, points_shape, new_points_shape):
        """The compiled program that serves inputs of these shapes (for tools/profile.py and FLOP counts)."""
        b, h, w, c = x_shape
        if self.transpose_portrait and h > w:
            h, w = w, h
        f32 = jax.ShapeDtypeStruct
        if self.step is None:
            lowered = self._forward_exact.lower(self._leaves, f32((b, h, w, c), self.in_dtype),
                                                f32(points_shape, jnp.float32), f32(new_points_shape, jnp.int32),
                                                f32((), jnp.float32))
        else:
            ch, cw = canvas_size(h, w, self.step)
            masks = [f32(m.shape, jnp.bool_) for m in _level_masks((ch, cw), (h, w))]
            lowered = self._forward.lower(self._leaves, f32((b, ch, cw, c), self.in_dtype), f32(points_shape, jnp.float32),
                                          f32(new_points_shape, jnp.int32), f32((), jnp.float32), f32((4,), jnp.int32),
                                          masks)
        return lowered.compile()

    def compiled_text(self, x_shape, points_shape, new_points_shape) -> str:
        """Optimized HLO of the program that serves inputs of these shapes (for tools/profile.py)."""
        return self.compiled(x_shape, points_shape, new_points_shape).as_text()

    def transposed_leaves(self):
        """The flat weights with every k x k kernel (HWIO) transposed to WHIO, for transposed inputs."""
        if self._leaves_t is None:   # one program, not one eager swapaxes compiled per kernel shape (41 for HRNet18s)
            self._leaves_t = jax.jit(lambda leaves: [jnp.swapaxes(a, 0, 1) if a.ndim == 4 else a
                                                     for a in leaves])(self._leaves)
        return self._leaves_t

    def __call__(self, x, points, new_points, gate):
        """The network on exact-size host inputs: numpy dict of (B, H, W, 1) outputs."""
        x = np.asarray(x, self.in_dtype)
        h, w = x.shape[1:3]
        out = self.run_canvas(jnp.asarray(x), np.asarray(points), np.asarray(new_points), gate, (h, w))
        return {k: np.asarray(v)[:, :h, :w] for k, v in out.items()}

    def run_canvas(self, x, points, new_points, gate, hw):
        """The network on a device canvas: x (B, Hx, Wx, 4) holds the input in its top-left (h, w) = `hw` corner
        and zeros elsewhere (what `click_step.plan_click` makes). Returns the outputs as device arrays of shape
        (B, Hx, Wx, 1), valid in the same corner (zeros around it with a canvas step, see `layers.Canvas`).

        The input runs on the canvas this runner picks for (h, w) (its own bucket, or a larger compiled one),
        transposed when portrait: x is cut or zero-padded to that canvas on the device, so no image goes through
        the host. Device-synchronised, so that `model_seconds` counts the network."""
        h, w = int(hw[0]), int(hw[1])
        hx, wx = x.shape[1:3]
        t0 = time.perf_counter()
        n_canvases = len(self.canvases)
        leaves = self._leaves
        transpose = self.transpose_portrait and h > w
        if transpose:
            x, h, w, leaves = jnp.swapaxes(x, 1, 2), w, h, self.transposed_leaves()
            swap = lambda p: jnp.asarray(p)[..., jnp.array([1, 0, 2])]  # (y, x, v) -> (x, y, v); padding stays
            points, new_points = swap(points), swap(new_points)
        b = x.shape[0]
        points_shape, new_points_shape = tuple(np.shape(points)), tuple(np.shape(new_points))
        if self.step is None:
            key = ("exact", (b, h, w, x.shape[-1]), points_shape, new_points_shape)
            if key not in self.canvases:
                self.canvases.add(key)
                self.compile_count += 1
            out = self._forward_exact(leaves, _fit(x.astype(self.in_dtype), (h, w)), jnp.asarray(points, jnp.float32),
                                      jnp.asarray(new_points, jnp.int32), jnp.float32(gate))
        else:
            key = self._canvas_for(b, h, w, points_shape, new_points_shape)
            if key not in self.canvases:
                self.canvases.add(key)
                self.compile_count += 1
            ch, cw = key[1:3]
            out = self._forward(leaves, _fit(x.astype(self.in_dtype), (ch, cw)), jnp.asarray(points, jnp.float32),
                                jnp.asarray(new_points, jnp.int32), jnp.float32(gate), self.model.geometry((h, w)),
                                _level_masks((ch, cw), (h, w)))
        back = (wx, hx) if transpose else (hx, wx)
        out = {k: _fit(v, back) for k, v in out.items()}
        if transpose:
            out = {k: jnp.swapaxes(v, 1, 2) for k, v in out.items()}
        out = jax.block_until_ready(out)
        dt = time.perf_counter() - t0
        self.model_seconds += dt
        if len(self.canvases) > n_canvases:
            self.first_call_seconds += dt
        return out

    def _canvas_for(self, b, h, w, points_shape, new_points_shape):
        """The canvas key that serves an h x w input: its own bucket, or a larger compiled one (ski rental)."""
        ch, cw = canvas_size(h, w, self.step)
        own = (b, ch, cw, points_shape, new_points_shape)
        if own in self.canvases or not self.compile_cost_mpx:
            return own
        larger = [k for k in self.canvases if k[0] == b and k[3:] == own[3:] and k[1] >= ch and k[2] >= cw]
        if not larger:
            return own
        best = min(larger, key=lambda k: (k[1] * k[2], k))
        wasted = self._wasted_mpx.get(own, 0.0) + b * (best[1] * best[2] - ch * cw) / 1e6
        if wasted > self.compile_cost_mpx:
            return own
        self._wasted_mpx[own] = wasted
        self.reused_calls += 1
        return best
