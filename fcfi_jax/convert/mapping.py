"""Official state_dict <-> Flax NNX model, strictly.

The NNX modules mirror the official attribute names, so the key table is a rule, not a list:
an official key equals the NNX path joined by '.', with the container name `seq` (used by
ConvBN for PyTorch's anonymous Sequential) dropped. Values change layout only:

| official                                   | Flax                         |
|--------------------------------------------|------------------------------|
| Conv2d weight (O, I/groups, kh, kw)        | weight (kh, kw, I/groups, O) |
| everything else (biases, BN, ScaleLayer)   | unchanged                    |
| `*.num_batches_tracked`                    | dropped (the only key that may be) |
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

DROPPABLE_SUFFIX = ".num_batches_tracked"


class ConversionError(ValueError):
    """A state_dict that does not fit the model: lists every missing, unexpected and mismatched key."""


def official_key(path) -> str:
    """Official key of an NNX state path."""
    return ".".join(str(p) for p in path if p != "seq")


def to_flax_layout(array: np.ndarray) -> np.ndarray:
    """PyTorch layout -> Flax layout (conv kernels OIHW -> HWIO)."""
    return np.transpose(array, (2, 3, 1, 0)) if array.ndim == 4 else array


def to_torch_layout(array: np.ndarray) -> np.ndarray:
    return np.transpose(array, (3, 2, 0, 1)) if array.ndim == 4 else array


def model_variables(model):
    """[(official key, nnx.Variable)] for every parameter and BatchNorm statistic of the model."""
    state = nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))
    return [(official_key(path), var) for path, var in nnx.to_flat_state(state)]


def load_official_state_dict(model, state_dict: dict[str, np.ndarray]) -> dict:
    """Fill `model` in place from an official state_dict (numpy arrays, PyTorch layout).

    Strict: every official key except `*.num_batches_tracked` must be consumed, every model
    variable filled, every shape equal; otherwise ConversionError lists all problems at once.
    Returns a small report (counts).
    """
    variables = model_variables(model)
    missing, mismatched, assignments = [], [], []
    used = set()
    for key, var in variables:
        if key not in state_dict:
            missing.append(f"{key} {tuple(var.get_value().shape)}")
            continue
        used.add(key)
        value = to_flax_layout(np.asarray(state_dict[key]))
        target = tuple(var.get_value().shape)
        if tuple(value.shape) != target:
            mismatched.append(f"{key}: checkpoint {tuple(np.asarray(state_dict[key]).shape)} "
                              f"-> {tuple(value.shape)} in Flax layout, model expects {target}")
            continue
        assignments.append((var, value))
    unexpected = sorted(k for k in state_dict if k not in used and not k.endswith(DROPPABLE_SUFFIX))
    if missing or unexpected or mismatched:
        lines = [f"state_dict does not match the model ({len(missing)} missing, {len(unexpected)} unexpected, "
                 f"{len(mismatched)} shape mismatches):"]
        for title, items in (("missing in checkpoint", missing), ("unexpected in checkpoint", unexpected),
                             ("shape mismatch", mismatched)):
            if items:
                lines.append(f"  {title}:")
                lines += [f"    {item}" for item in items[:50]]
                if len(items) > 50:
                    lines.append(f"    ... and {len(items) - 50} more")
        raise ConversionError("\n".join(lines))
    for var, value in assignments:
        var.set_value(jnp.asarray(value, dtype=var.get_value().dtype))
    dropped = sorted(k for k in state_dict if k.endswith(DROPPABLE_SUFFIX))
    n_params = sum(int(np.prod(v.get_value().shape)) for _, v in variables if isinstance(v, nnx.Param))
    return {"variables": len(assignments), "dropped_num_batches_tracked": len(dropped), "parameters": n_params}


def export_official_state_dict(model) -> dict[str, np.ndarray]:
    """The model's variables as an official-layout state_dict (without num_batches_tracked)."""
    return {key: to_torch_layout(np.asarray(var.get_value())) for key, var in model_variables(model)}
