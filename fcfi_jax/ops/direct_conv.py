"""Direct convolutions for inference on XLA:CPU: a small C++ kernel (`direct_conv.cc`) behind `jax.ffi`.

XLA:CPU's Eigen convolutions pack the 9 * Cin inputs of every output pixel before multiplying; for the HRNet
branches' 18-72 channels that packing sets the time, and for ResNet-101's dilated layers and ASPP (dilation 2-36)
the zero padding it packs and multiplies too. The kernel reads the input in place, keeps the sums in vector
registers, skips taps on the padding, and runs the wide stride-1 3x3 layers as Winograd F(2x2, 3x3) tiles (16
instead of 36 multiplications per 4 outputs; see the .cc file). It serves `layers.Conv2d` / `conv_bn` for dense
float32 3x3 convolutions with padding == dilation and 1x1 convolutions (>= 64 channels in and out), stride 1 or 2,
>= 16 output channels (`DirectConv.supports`), with a folded BatchNorm / bias, residual and ReLU epilogue, when
the caller chose it (`fcfi_jax.ops.cpu_kernels`: the predictor's runner on the CPU backend; under `jax.vmap`
the samples fold into the kernel's batch axis); training, the lockstep evaluator, GPU and TPU keep
`lax.conv_general_dilated`. Outputs equal XLA's up to float rounding (summation order; for Winograd
also the tile transforms, which only add, subtract and halve: tests/test_direct_conv.py bounds both alike).

The kernel is compiled on first use with the system C++ compiler (`CXX`, default g++) against the XLA FFI
headers that ship with jaxlib, for this machine's CPU (`-march=native`), and cached in
`$FCFI_JAX_CACHE/direct_conv` (default ~/.cache/fcfi_jax). Without a compiler everything runs on XLA's
convolutions (a one-line warning says why); FCFI_JAX_DIRECT_CONV=0 (read by `fcfi_jax.ops.cpu_kernels`)
turns the kernel off, FCFI_JAX_WINOGRAD=0 (read there too) keeps it direct everywhere.
"""
from __future__ import annotations

import ctypes
import dataclasses
import functools
import hashlib
import logging
import os
import platform
import re
import shlex
import subprocess
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp

_SOURCE = Path(__file__).with_name("direct_conv.cc")
_TARGET = "fcfi_direct_conv"
_FLAGS = ["-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-fno-math-errno"]
log = logging.getLogger(__name__)


def _cpu_id() -> str:
    """What -march=native compiles for: the CPU's model and flags (a shared cache serves several machines)."""
    try:
        lines = open("/proc/cpuinfo").read().splitlines()
        return "\n".join(sorted({ln for ln in lines if ln.startswith(("model name", "flags"))}))
    except OSError:
        return platform.processor()


def _compile() -> Path:
    """The shared library for this source, jaxlib and CPU, compiled into the cache if it is not there yet."""
    import jaxlib

    cxx = os.environ.get("CXX", "g++")
    src = _SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([src, jaxlib.__version__.encode(), " ".join([cxx, *_FLAGS]).encode(),
                                     _cpu_id().encode(), platform.machine().encode()])).hexdigest()[:16]
    cache = Path(os.environ.get("FCFI_JAX_CACHE", os.path.expanduser("~/.cache/fcfi_jax"))) / "direct_conv"
    lib = cache / f"direct_conv_{key}.so"
    if lib.exists():
        return lib
    cache.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache)  # compile aside, then rename: safe for concurrent builds
    os.close(fd)
    cmd = [*shlex.split(cxx), *_FLAGS, "-I", jax.ffi.include_dir(), str(_SOURCE), "-o", tmp]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if res.returncode:
            errors = [ln for ln in res.stderr.splitlines() if "error" in ln] or res.stderr.splitlines() or [""]
            raise RuntimeError(f"{cxx} exited with {res.returncode}: {errors[0][-300:]}")
        os.replace(tmp, lib)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return lib


@functools.lru_cache(maxsize=None)
def available() -> bool:
    """True when the kernel is built and registered for the CPU backend (False on GPU/TPU or without a
    compiler)."""
    if jax.default_backend() != "cpu":
        return False
    try:
        lib = ctypes.cdll.LoadLibrary(str(_compile()))
        jax.ffi.register_ffi_target(_TARGET, jax.ffi.pycapsule(lib.FcfiDirectConv), platform="cpu")
    except (OSError, RuntimeError, subprocess.SubprocessError, AttributeError) as e:
        log.warning("fcfi_jax: direct CPU convolutions unavailable (%s); using XLA's convolutions. Install a C++ "
                    "compiler (g++) for the faster CPU path, or set FCFI_JAX_DIRECT_CONV=0 to silence this.",
                    str(e).splitlines()[0])
        return False
    return True


@dataclasses.dataclass(frozen=True)
class DirectConv:
    """The kernel as `Kernels.conv`: it serves the convolutions it `supports`, XLA the others. `method`: see
    `conv`."""

    method: str = "auto"

    def supports(self, x, w, stride: int, padding: int, dilation: int, groups: int) -> bool:
        """Dense float32 3x3 convolutions with padding == dilation ("same" size; ResNet-101's dilated layers and
        the ASPP included) and 1x1 convolutions without padding, stride 1 or 2, >= 16 output channels (fewer
        leave most vector lanes idle). 1x1 ones need >= 64 input and output channels (ResNet's): the kernel's
        gain there is the fused epilogue, narrower ones stay XLA matrix multiplies that fuse with their
        neighbours."""
        if not (x.ndim == 4 and x.dtype == jnp.float32 and w.ndim == 4 and w.shape[0] == w.shape[1]
                and groups == 1 and stride in (1, 2) and w.shape[-1] >= 16 and dilation >= 1):
            return False
        if w.shape[0] == 3:
            return padding == dilation
        return w.shape[0] == 1 and padding == 0 and w.shape[2] >= 64 and w.shape[3] >= 64

    def __call__(self, x, w, stride: int, padding: int, dilation: int, **epilogue):
        """`conv` (what `supports` accepts) with its epilogue keywords."""
        return conv(x, w, stride, padding, dilation, method=self.method, **epilogue)


_METHODS = {"auto": 0, "direct": 1, "winograd": 2}


def conv(x, w, stride: int = 1, padding: int | None = None, dilation: int = 1, *, scale=None, shift=None,
         residual=None, relu: bool = False, valid_hw=None, method: str = "auto"):
    """k x k convolution (k 3 with zero padding == dilation, or k 1 without padding) and its epilogue, in one
    kernel call: relu?(conv(x, w) * scale + shift [+ residual]), zero outside `valid_hw`.

    x (B, H, W, Ci) float32, w (k, k, Ci, Co); stride 1 or 2; padding (default dilation * (k - 1) / 2) must be
    that; scale, shift (Co,) (default 1 and 0: a bias or a folded BatchNorm); residual (B, Ho, Wo, Co);
    valid_hw: the valid (rows, cols) of the output, (2,) or per image (B, 2) (the canvas padding, see
    `layers`); None: all of it. Returns (B, Ho, Wo, Co), Ho = ceil(H / stride).
    method: "auto" (the kernel picks Winograd F(2x2, 3x3) for stride-1 3x3 layers with many channels where its
    cost model says it is faster, see the .cc file), "direct" or "winograd" (stride-1 3x3 only).
    """
    if method not in _METHODS or (method == "winograd" and (w.shape[0] != 3 or stride != 1)):
        raise ValueError(f"direct_conv: method {method!r} (choose auto, direct, or winograd for stride-1 3x3)")
    if not available():
        raise RuntimeError("fcfi_jax.ops.direct_conv: the kernel is not available (CPU backend and a C++ compiler "
                           "are needed); use jax.lax.conv_general_dilated")
    k = w.shape[0]
    if w.ndim != 4 or w.shape[1] != k or k not in (1, 3) or w.shape[2] != x.shape[-1]:
        raise ValueError(f"direct_conv: weights {w.shape} are not (k, k, {x.shape[-1]}, Co) with k 1 or 3")
    if padding is None:
        padding = dilation * (k // 2)
    if padding != dilation * (k // 2) or (k == 1 and dilation != 1) or stride not in (1, 2):
        raise ValueError(f"direct_conv: {k}x{k} with padding {padding}, dilation {dilation}, stride {stride} is "
                         "not supported (padding must be dilation for 3x3, 0 for 1x1; stride 1 or 2)")
    b, h, wd, _ = x.shape
    co = w.shape[-1]
    ho, wo = (h - 1) // stride + 1, (wd - 1) // stride + 1
    f32 = lambda v, default: jnp.broadcast_to(jnp.asarray(default if v is None else v, jnp.float32), (co,))
    valid = jnp.asarray((ho, wo) if valid_hw is None else valid_hw, jnp.int32)
    valid = jnp.broadcast_to(valid, (b, 2))
    res = jnp.zeros((0,), jnp.float32) if residual is None else residual.astype(jnp.float32)
    call = _kernel_call(int(stride), int(dilation), bool(relu), residual is not None, _METHODS[method])
    return call(x, w.astype(jnp.float32), f32(scale, 1.0), f32(shift, 0.0), res, valid)


@functools.lru_cache(maxsize=None)
def _kernel_call(stride: int, dilation: int, relu: bool, has_residual: bool, method: int):
    """The FFI call for these static settings, with a batching rule: under `jax.vmap` (e.g. a click step vmapped
    over samples, `LockstepEvaluator(kernels=ops.for_backend(), net_per_sample=False)`) the mapped axis is folded
    into the kernel's own batch axis, so a batch of N samples is one kernel call on N * B images; per-sample
    weights (never the case in this project) run one call per sample."""

    def call(x, w, scale, shift, res, valid):
        b, h, wd, _ = x.shape
        out = jax.ShapeDtypeStruct((b, (h - 1) // stride + 1, (wd - 1) // stride + 1, w.shape[-1]), jnp.float32)
        return jax.ffi.ffi_call(_TARGET, out)(x, w, scale, shift, res, valid, stride=stride, dilation=dilation,
                                              relu=int(relu), has_residual=int(has_residual), method=method)

    call = jax.custom_batching.custom_vmap(call)

    @call.def_vmap
    def _batched(axis_size, in_batched, x, w, scale, shift, res, valid):
        n = axis_size
        full = lambda a, batched: a if batched else jnp.broadcast_to(a, (n,) + a.shape)
        xb, wb, sb, hb, rb, vb = in_batched
        if wb or sb or hb:
            pick = lambda a, batched, i: a[i] if batched else a
            outs = [call(*(pick(a, bt, i) for a, bt in zip((x, w, scale, shift, res, valid), in_batched)))
                    for i in range(n)]
            return jnp.stack(outs), True
        fold = lambda a: a.reshape((-1,) + a.shape[2:])   # (N, B, ...) -> (N * B, ...)
        x2, valid2 = fold(full(x, xb)), fold(full(valid, vb))
        res2 = fold(full(res, rb)) if has_residual else res
        y = call(x2, w, scale, shift, res2, valid2)
        return y.reshape((n, -1) + y.shape[1:]), True

    return call


def conv3x3(x, w, stride: int = 1, padding: int | None = None, dilation: int = 1, **epilogue):
    """`conv` of a 3x3 `w`: zero padding == dilation (the default padding; 1 by default)."""
    if w.shape[:2] != (3, 3):
        raise ValueError(f"conv3x3: weights {w.shape} are not 3x3")
    return conv(x, w, stride, padding, dilation, **epilogue)


_SHAPES = re.compile(r"operand_layout_constraints=\{f32\[(\d+),(\d+),(\d+),(\d+)\]\S*, f32\[(\d+),\d+,\d+,(\d+)\]")


def _taps_in_bounds(n_in: int, k: int, stride: int, dilation: int) -> int:
    """(output position, tap) pairs along one axis that read inside the input."""
    n_out, half = (n_in - 1) // stride + 1, k // 2
    return sum(1 for o in range(n_out) for t in range(k) if 0 <= o * stride + (t - half) * dilation < n_in)


def hlo_flops(hlo_text: str) -> float:
    """FLOPs of the kernel's calls in an optimized HLO text (XLA's cost analysis counts custom calls as 0),
    counted as XLA counts its convolutions: taps that fall on the zero padding excluded, Winograd layers as
    the convolution they compute (not their fewer multiplications)."""
    total = 0
    for line in hlo_text.splitlines():
        if f'custom_call_target="{_TARGET}"' not in line:
            continue
        m = _SHAPES.search(line)
        attrs = dict(re.findall(r"(\w+) = (\d+) : i64", line))
        if not m or "stride" not in attrs:
            continue
        b, h, w, ci, k, co = (int(v) for v in m.groups())
        s, d = int(attrs["stride"]), int(attrs.get("dilation", 1))
        total += 2 * b * ci * co * _taps_in_bounds(h, k, s, d) * _taps_in_bounds(w, k, s, d)
    return float(total)
