"""Direct 3x3 convolutions for inference on XLA:CPU: a small C++ kernel (`direct_conv.cc`) behind `jax.ffi`.

XLA:CPU's Eigen convolutions pack the 9 * Cin inputs of every output pixel before multiplying; for the HRNet
branches' 18-72 channels that packing sets the time. The kernel reads the input in place and keeps the sums
in vector registers (see the .cc file). It serves `layers.Conv2d` for 3x3, padding 1, stride 1 or 2, dense,
float32 convolutions with >= 16 output channels, only while `inference_scope()` is active (the predictor's
runner traces its forwards in it) and only on the CPU backend: training, GPU and TPU keep
`lax.conv_general_dilated`. Outputs equal XLA's up to float summation order.

The kernel is compiled on first use with the system C++ compiler (`CXX`, default g++) against the XLA FFI
headers that ship with jaxlib, for this machine's CPU (`-march=native`), and cached in
`$FCFI_JAX_CACHE/direct_conv` (default ~/.cache/fcfi_jax). Without a compiler, or with
FCFI_JAX_DIRECT_CONV=0, everything runs on XLA's convolutions (a one-line warning says why).
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import logging
import os
import platform
import re
import shlex
import subprocess
import tempfile
import threading
from pathlib import Path

import jax
import jax.numpy as jnp

_SOURCE = Path(__file__).with_name("direct_conv.cc")
_TARGET = "fcfi_direct_conv3x3"
_FLAGS = ["-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-fno-math-errno"]
_scope = threading.local()
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
    """True when the kernel is built and registered for the CPU backend (False on GPU/TPU, without a
    compiler, or with FCFI_JAX_DIRECT_CONV=0)."""
    if os.environ.get("FCFI_JAX_DIRECT_CONV", "1") in ("0", "false", "False"):
        return False
    if jax.default_backend() != "cpu":
        return False
    try:
        lib = ctypes.cdll.LoadLibrary(str(_compile()))
        jax.ffi.register_ffi_target(_TARGET, jax.ffi.pycapsule(lib.FcfiDirectConv3x3), platform="cpu")
    except (OSError, RuntimeError, subprocess.SubprocessError, AttributeError) as e:
        log.warning("fcfi_jax: direct CPU convolutions unavailable (%s); using XLA's convolutions. Install a C++ "
                    "compiler (g++) for the faster CPU path, or set FCFI_JAX_DIRECT_CONV=0 to silence this.",
                    str(e).splitlines()[0])
        return False
    return True


@contextlib.contextmanager
def inference_scope(enabled: bool = True):
    """Trace the forwards inside this to let `layers.Conv2d` use the direct kernel (CPU, inference)."""
    prev = getattr(_scope, "on", False)
    _scope.on = enabled
    try:
        yield
    finally:
        _scope.on = prev


def applies(x, w, stride: int, padding: int, dilation: int, groups: int) -> bool:
    """Whether `conv3x3` serves this convolution in the current scope."""
    return (getattr(_scope, "on", False) and x.ndim == 4 and x.dtype == jnp.float32 and w.shape[:2] == (3, 3)
            and w.shape[-1] >= 16 and stride in (1, 2) and padding == 1 and dilation == 1 and groups == 1
            and available())


def conv3x3(x, w, stride: int = 1, *, scale=None, shift=None, residual=None, relu: bool = False, valid_hw=None):
    """3x3 convolution with zero padding 1 and its epilogue, in one kernel call:
    relu?(conv(x, w) * scale + shift [+ residual]), zero outside `valid_hw`.

    x (B, H, W, Ci) float32, w (3, 3, Ci, Co); scale, shift (Co,) (default 1 and 0: a bias or a folded
    BatchNorm); residual (B, Ho, Wo, Co); valid_hw: the valid (rows, cols) of the output, (2,) or per image
    (B, 2) (the canvas padding, see `layers`); None: all of it. Returns (B, Ho, Wo, Co), Ho = ceil(H / stride).
    """
    if not available():
        raise RuntimeError("fcfi_jax.models.direct_conv: the kernel is not available (CPU backend, a C++ compiler "
                           "and FCFI_JAX_DIRECT_CONV unset are needed); use jax.lax.conv_general_dilated")
    b, h, wd, _ = x.shape
    co = w.shape[-1]
    ho, wo = (h - 1) // stride + 1, (wd - 1) // stride + 1
    f32 = lambda v, default: jnp.broadcast_to(jnp.asarray(default if v is None else v, jnp.float32), (co,))
    valid = jnp.asarray((ho, wo) if valid_hw is None else valid_hw, jnp.int32)
    valid = jnp.broadcast_to(valid, (b, 2))
    res = jnp.zeros((0,), jnp.float32) if residual is None else residual.astype(jnp.float32)
    out = jax.ShapeDtypeStruct((b, ho, wo, co), jnp.float32)
    return jax.ffi.ffi_call(_TARGET, out)(x, w.astype(jnp.float32), f32(scale, 1.0), f32(shift, 0.0), res, valid,
                                          stride=int(stride), relu=int(relu), has_residual=int(residual is not None))


_CALL = re.compile(r"= f32\[(\d+),(\d+),(\d+),(\d+)\]\S* custom-call\(.*custom_call_target=\"%s\", "
                   r"operand_layout_constraints=\{f32\[\d+,\d+,\d+,(\d+)\]" % _TARGET)


def hlo_flops(hlo_text: str) -> float:
    """FLOPs of the direct-conv calls in an optimized HLO text (XLA's cost analysis counts custom calls as 0)."""
    return float(sum(2 * 9 * int(b) * int(h) * int(w) * int(co) * int(ci) for b, h, w, co, ci in _CALL.findall(hlo_text)))
