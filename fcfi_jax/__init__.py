"""fcfi_jax: FCFI (CVPR 2023) interactive segmentation in JAX/Flax NNX.

    model = fcfi_jax.load_model("hrnet18s.pth")      # official checkpoint or converted directory
"""


def load_model(path):
    """Load an official `.pth` or a directory written by `tools/convert.py` (eval mode)."""
    from fcfi_jax.convert.checkpoint import load_model as _load

    return _load(path)


__all__ = ["load_model"]
