"""Optimizer of the official recipe: Adam, per-parameter LR multipliers, MultiStepLR in steps.

PyTorch builds one param group per parameter with lr = base_lr * lr_mult. Adam's update m_hat / (sqrt(v_hat) +
eps) does not depend on the learning rate, so scaling the Adam direction by the multiplier before the
schedule is exactly that.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from fcfi_jax.convert.mapping import official_key

# Official keys (prefixes) trained at 1x inside an otherwise 0.1x HRNet feature extractor (docs/official_quirks.md #18).
_HRNET_FULL_LR = ("feature_extractor.conv3x3_ocr.", "feature_extractor.ocr_distri_head.",
                  "feature_extractor.ocr_gather_head.")


def lr_multiplier(key: str, family: str, backbone_mult: float = 0.1) -> float:
    """LR multiplier of one parameter given its official key (e.g. 'feature_extractor.stage2.0...weight')."""
    if family == "hrnet":
        if key.startswith("feature_extractor.") and not key.startswith(_HRNET_FULL_LR):
            return backbone_mult  # includes FFCM, CFFM, aux_head and cls_head (docs/official_quirks.md #18)
        return 1.0
    if family == "deeplab":
        return backbone_mult if key.startswith("feature_extractor.backbone.") else 1.0
    raise ValueError(f"unknown model family {family!r}")


def lr_multipliers(params: dict, family: str, backbone_mult: float = 0.1):
    """A pytree like `params` (a pure dict, `nnx.State.to_pure_dict()`) of each parameter's multiplier."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: jnp.float32(lr_multiplier(official_key(p.key for p in path), family, backbone_mult)),
        params)


def multistep_schedule(base_lr: float, steps_per_epoch: int, milestones=(), gamma: float = 0.1):
    """torch MultiStepLR stepped once per epoch, expressed per optimizer step."""
    return optax.piecewise_constant_schedule(
        base_lr, {int(m) * int(steps_per_epoch): gamma for m in milestones})


def make_optimizer(params: dict, family: str, base_lr: float, steps_per_epoch: int, milestones=(),
                   gamma: float = 0.1, backbone_mult: float = 0.1, b1: float = 0.9, b2: float = 0.999,
                   eps: float = 1e-8):
    """(optax transform, schedule): Adam(b1, b2, eps, no weight decay) with the official LR multipliers."""
    mults = lr_multipliers(params, family, backbone_mult)
    schedule = multistep_schedule(base_lr, steps_per_epoch, milestones, gamma)
    scale_by_mult = optax.stateless(lambda updates, _: jax.tree_util.tree_map(jnp.multiply, updates, mults))
    tx = optax.chain(optax.scale_by_adam(b1=b1, b2=b2, eps=eps), scale_by_mult,
                     optax.scale_by_learning_rate(schedule))
    return tx, schedule
