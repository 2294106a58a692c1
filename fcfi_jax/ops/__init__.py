"""Backend-specific kernels for the model's layers, chosen by the caller that knows the backend.

`fcfi_jax.models` is plain JAX: `lax.conv_general_dilated`, interpolation-matrix resizes, vmapped window
slices. A `Kernels` value names the faster or more portable forms to use instead; the caller resolves it
once and hands it to the model with `use_kernels(model, kernels)` (an NNX attribute on every layer, like
its train/eval mode):

- `CanvasRunner` (predictor, demo, `evaluate`), `tools/benchmark.py`: `for_backend()`, on CPU the direct 3x3
  kernel, shifted-add depthwise, per-part 1x1 and gather resizes;
- the trainer: `for_backend(direct_conv=False)` (the direct kernel has no gradient); the lockstep evaluator
  (`evaluate --batch N`) too, the forms its records were checked with (`LockstepEvaluator(kernels=)` takes
  `for_backend()`: on the CPU the network runs per sample there, and the kernel's results do not depend on the
  batch);
- GPU or TPU, and a model called directly: `REFERENCE`;
- `tools/export.py`: `portable_kernels()`, the CPU forms without the machine-specific kernel, and window and
  pool forms that ONNX holds.

Every form computes the reference's values up to float rounding; the parity tests run on both paths
(`FCFI_JAX_KERNELS=reference|backend python -m pytest ...`, see docs/parity.md).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable


@dataclasses.dataclass(frozen=True)
class Kernels:
    """Which form serves each layer; None keeps the reference form of `fcfi_jax.models.layers`.

    conv: an object with `supports(x, w, stride, padding, dilation, groups)` and
        `__call__(x, w, stride, padding, dilation, *, scale, shift, residual, relu, valid_hw)` (the conv, its
        per-channel affine epilogue and the canvas mask in one call), e.g. `direct_conv.DirectConv()`.
    depthwise(x, w, padding, dilation): stride-1 depthwise convolution, w (kh, kw, 1, C), no bias.
    pointwise(parts, w): 1x1 convolution of the channel concatenation of `parts`, w (Cin, Cout), no bias.
    lerp(x, ty, tx): separable two-tap resize by row and column taps (i0, i1, w0, w1).
    crop(x, sy, sx, win), paste(x, patch, sy, sx): the FFCM window, per example.
    max_pool(x, hw): the ResNet stem's 3x3 stride-2 max pool.
    """

    conv: Any = None
    depthwise: Callable | None = None
    pointwise: Callable | None = None
    lerp: Callable | None = None
    crop: Callable | None = None
    paste: Callable | None = None
    max_pool: Callable | None = None


REFERENCE = Kernels()


def use_kernels(model, kernels: Kernels):
    """Make every layer of `model` (an NNX module) use `kernels`; returns the model. Call it on the module
    you trace (e.g. right after `nnx.merge` inside a jitted function): the setting is part of the graph."""
    model.set_attributes(kernels=kernels, raise_if_not_found=False)
    return model


def _env_off(name: str) -> bool:
    return os.environ.get(name, "1") in ("0", "false", "False")


def cpu_kernels(direct_conv: bool = True) -> Kernels:
    """The XLA:CPU forms (`xla_cpu`) and, for float32 inference, the direct 3x3 kernel (`direct_conv`) where it
    can be built. FCFI_JAX_DIRECT_CONV=0 turns the kernel off, FCFI_JAX_WINOGRAD=0 its Winograd tiles,
    FCFI_JAX_RESIZE=matmul the gather resizes."""
    from fcfi_jax.ops import direct_conv as dc, xla_cpu

    conv = None
    if direct_conv and not _env_off("FCFI_JAX_DIRECT_CONV") and dc.available():
        conv = dc.DirectConv("direct" if _env_off("FCFI_JAX_WINOGRAD") else "auto")
    lerp = None if os.environ.get("FCFI_JAX_RESIZE") == "matmul" else xla_cpu.lerp
    return Kernels(conv=conv, depthwise=xla_cpu.depthwise, pointwise=xla_cpu.pointwise, lerp=lerp)


def for_backend(backend: str | None = None, *, direct_conv: bool = True) -> Kernels:
    """`cpu_kernels(direct_conv)` on the CPU backend (default: JAX's), `REFERENCE` elsewhere."""
    import jax

    if (backend or jax.default_backend()) != "cpu":
        return REFERENCE
    return cpu_kernels(direct_conv)


def portable_kernels() -> Kernels:
    """For export: the CPU forms that plain ONNX/StableHLO hold, and the `portable` window and max pool."""
    from fcfi_jax.ops import portable, xla_cpu

    return Kernels(depthwise=xla_cpu.depthwise, pointwise=xla_cpu.pointwise, lerp=xla_cpu.lerp,
                   crop=portable.crop, paste=portable.paste, max_pool=portable.max_pool_3x3_s2)
