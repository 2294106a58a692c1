"""FCFI training losses (isegm/model/losses.py as the official trainers use them), reproducing the official numerics.

`normalized_focal_loss` is NormalizedFocalLossSigmoid(alpha=0.5, gamma=2) with a detached
normaliser; `mask` turns it into the masked variant used on updated_feedback1 (only pixels whose
nearest-upsampled soft-box value truncates to exactly 1 count, docs/official_quirks.md #17). Both always apply a
sigmoid, also to the feedback maps that are already probability-like (docs/official_quirks.md #16).

`fcfi_loss(..., feedback2="corrected")` is the one opt-in deviation: `updated_feedback2` is a sigmoid output, so the
official NFL sees sigmoid(p) in (0.5, 0.73) and its loss barely moves during training; the corrected term is the
binary cross-entropy of the probability itself (`probability_bce`). The default stays the official objective.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from fcfi_jax.models.layers import accum_dtype

EPS = 1e-12
PROB_CLIP = 1e-6     # corrected feedback-2 loss: p is clipped to [PROB_CLIP, 1 - PROB_CLIP] before the logs
FEEDBACK2_LOSSES = ("official", "corrected")


def normalized_focal_loss(pred, label, mask=None, alpha=0.5, gamma=2.0, ignore_label=-1):
    """Per-sample loss (B,) for pred/label/mask of shape (B, H, W, 1)."""
    dt = accum_dtype(pred.dtype)  # float32 for float32/bfloat16 outputs, float64 in the float64 mode
    pred = pred.astype(dt)
    label = label.astype(dt)
    one = label > 0.5
    sw = label != ignore_label
    if mask is not None:
        sw = sw & (jnp.trunc(mask) == 1)
    swf = sw.astype(dt)
    p = jax.nn.sigmoid(pred)
    a = jnp.where(one, alpha * swf, (1 - alpha) * swf)
    pt = jnp.where(sw, 1.0 - jnp.abs(label - p), 1.0)
    beta = (1.0 - pt) ** gamma
    sw_sum = jnp.sum(swf, axis=(1, 2), keepdims=True)
    beta_sum = jnp.sum(beta, axis=(1, 2), keepdims=True)
    mult = jax.lax.stop_gradient(sw_sum / (beta_sum + EPS))
    beta = beta * mult
    loss = -a * beta * jnp.log(jnp.minimum(pt + EPS, 1.0)) * swf
    return jnp.sum(loss, axis=(1, 2, 3)) / (jnp.sum(swf, axis=(1, 2, 3)) + EPS)


def probability_bce(prob, label, ignore_label=-1, clip=PROB_CLIP):
    """Per-sample (B,) binary cross-entropy of a probability map (no sigmoid), mean over non-ignored pixels.

    Clipping keeps log() finite where the network saturates (p exactly 0 or 1 in float32); the clipped pixels get
    no gradient, as in torch's BCELoss with its log clamp."""
    dt = accum_dtype(prob.dtype)
    p = jnp.clip(prob.astype(dt), clip, 1.0 - clip)
    label = label.astype(dt)
    valid = (label != ignore_label).astype(dt)
    y = (label > 0.5).astype(dt)
    bce = -(y * jnp.log(p) + (1.0 - y) * jnp.log(1.0 - p)) * valid
    return jnp.sum(bce, axis=(1, 2, 3)) / (jnp.sum(valid, axis=(1, 2, 3)) + EPS)


def fcfi_loss(outputs, gt, feedback_weight: float, feedback2: str = "official"):
    """Official objective: NFL(instances) + w * maskedNFL(uf1, valid_masks) + w * NFL(uf2); batch means.

    feedback2="corrected" replaces NFL(uf2), which applies a second sigmoid to a probability
    (docs/official_quirks.md #16), by `probability_bce(uf2)`. The aux loss is configured officially but never
    applied (docs/official_quirks.md #15), so it is absent here. Returns (total, dict of the three terms).
    """
    if feedback2 not in FEEDBACK2_LOSSES:
        raise ValueError(f"feedback2={feedback2!r} must be one of {', '.join(FEEDBACK2_LOSSES)}")
    uf2 = outputs["updated_feedback2"]
    terms = {
        "instance": jnp.mean(normalized_focal_loss(outputs["instances"], gt)),
        "feedback1": jnp.mean(normalized_focal_loss(outputs["updated_feedback1"], gt, outputs["valid_masks"])),
        "feedback2": jnp.mean(normalized_focal_loss(uf2, gt) if feedback2 == "official" else probability_bce(uf2, gt)),
    }
    total = terms["instance"] + feedback_weight * terms["feedback1"] + feedback_weight * terms["feedback2"]
    return total, terms
