"""fcfi_jax: FCFI (CVPR 2023) interactive segmentation in JAX/Flax NNX.

    model = fcfi_jax.load_model("hrnet18s.pth")      # official checkpoint or converted directory
    model = fcfi_jax.load_model("hrnet18s.pth", dtype="float64")   # the float64 mode (see docs/parity.md)
"""

DTYPES = ("float32", "float64")


def load_model(path, dtype: str = "float32"):
    """Load an official `.pth` or a directory written by `tools/convert.py` (eval mode).

    dtype "float64" turns on `jax_enable_x64` for the process and casts the parameters and BatchNorm statistics
    once; the network then computes in the dtype of the image it is given (float64 images for float64 results).
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    from fcfi_jax.convert.checkpoint import load_model as _load

    if dtype == "float64":
        import jax

        jax.config.update("jax_enable_x64", True)
    model = _load(path)
    if dtype != "float32":
        from fcfi_jax.models.is_model import cast_model

        cast_model(model, dtype)
    return model


__all__ = ["load_model", "DTYPES"]
