"""Per-program XLA compiler options for this package's compiled forwards (nothing process-wide is changed).

On CPU, XLA (jaxlib 0.10) hands convolutions, dots and reductions to the YNNPACK library by default.
For FCFI's layers the plain XLA:CPU path (Eigen convolutions and matmuls, XLA loop fusions) is faster:
measured on the 2-core Xeon of this project, YNNPACK 1x1 convolutions run at ~50-65 GFLOP/s against
~130-150 for the dot XLA emits, the 270-channel OCR / aux-head fusions take 2-4x longer, and the
click-disk min-reduction takes ~90 ms instead of ~8 ms (see tools/profile.py and the README
"Benchmarks" section). `compiler_options()` therefore turns the library fusions off for the programs
that pass it to `jax.jit(..., compiler_options=...)`, on CPU only and only where this jaxlib knows the
option. FCFI_JAX_XLA_DEFAULTS=1 keeps XLA's defaults (for A/B measurements).
"""
from __future__ import annotations

import functools
import os

CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


@functools.lru_cache(maxsize=None)
def _supported() -> bool:
    import jax
    import jax.numpy as jnp

    try:
        jax.jit(lambda x: x + 1, compiler_options=CPU_OPTIONS).lower(jnp.zeros(())).compile()
        return True
    except Exception:  # an older / newer jaxlib without the option: keep its defaults
        return False


def compiler_options() -> dict | None:
    """Options for `jax.jit(..., compiler_options=...)` on the default backend, or None (XLA defaults)."""
    import jax

    if os.environ.get("FCFI_JAX_XLA_DEFAULTS", "") not in ("", "0"):
        return None
    if jax.default_backend() != "cpu" or not _supported():
        return None
    return dict(CPU_OPTIONS)
