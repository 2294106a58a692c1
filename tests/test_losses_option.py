"""`loss.feedback2`: the official objective stays what it was; `corrected` is BCE on the feedback-2 probability.

The official loss applies a sigmoid to `updated_feedback2`, which is already a probability
(docs/official_quirks.md #16), so that term sees values in (0.5, 0.73) and hardly moves. The corrected option
scores the probability itself. Checked here on small hand-made maps, against float64 numpy references.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fcfi_jax.training.losses import PROB_CLIP, fcfi_loss, normalized_focal_loss, probability_bce

W = 0.2


def _batch(seed=0, b=2, h=12, w=16):
    rng = np.random.default_rng(seed)
    gt = (rng.random((b, h, w, 1)) < 0.4).astype(np.float32)
    gt[0, :2, :3] = -1                                    # an ignore region
    out = {
        "instances": rng.normal(0, 2, (b, h, w, 1)).astype(np.float32),
        "updated_feedback1": rng.random((b, h, w, 1)).astype(np.float32),
        "updated_feedback2": rng.random((b, h, w, 1)).astype(np.float32),
        "valid_masks": (rng.random((b, h, w, 1)) < 0.7).astype(np.float32),
    }
    return {k: jnp.asarray(v) for k, v in out.items()}, jnp.asarray(gt)


def _bce_ref(p, gt):
    p = np.clip(np.asarray(p, np.float64), PROB_CLIP, 1 - PROB_CLIP)
    gt = np.asarray(gt, np.float64)
    valid = gt != -1
    y = gt > 0.5
    bce = -(y * np.log(p) + (~y) * np.log(1 - p))
    return np.array([bce[i][valid[i]].mean() for i in range(len(p))])


def test_official_is_the_default_and_unchanged():
    out, gt = _batch()
    total, terms = fcfi_loss(out, gt, W)
    total_o, terms_o = fcfi_loss(out, gt, W, feedback2="official")
    # the released objective, written out term by term as before the option existed
    inst = jnp.mean(normalized_focal_loss(out["instances"], gt))
    fb1 = jnp.mean(normalized_focal_loss(out["updated_feedback1"], gt, out["valid_masks"]))
    fb2 = jnp.mean(normalized_focal_loss(out["updated_feedback2"], gt))
    for t in (terms, terms_o):
        assert np.asarray(t["instance"]).tobytes() == np.asarray(inst).tobytes()
        assert np.asarray(t["feedback1"]).tobytes() == np.asarray(fb1).tobytes()
        assert np.asarray(t["feedback2"]).tobytes() == np.asarray(fb2).tobytes()
    ref_total = inst + W * fb1 + W * fb2
    assert np.asarray(total).tobytes() == np.asarray(total_o).tobytes() == np.asarray(ref_total).tobytes()


def test_corrected_is_bce_of_the_probability():
    out, gt = _batch(1)
    total_o, terms_o = fcfi_loss(out, gt, W)
    total_c, terms_c = fcfi_loss(out, gt, W, feedback2="corrected")
    # only the feedback-2 term changes
    assert float(terms_c["instance"]) == float(terms_o["instance"])
    assert float(terms_c["feedback1"]) == float(terms_o["feedback1"])
    ref = _bce_ref(out["updated_feedback2"], gt)
    np.testing.assert_allclose(np.asarray(probability_bce(out["updated_feedback2"], gt)), ref, rtol=1e-5)
    np.testing.assert_allclose(float(terms_c["feedback2"]), ref.mean(), rtol=1e-5)
    expected_total = float(terms_o["instance"]) + W * float(terms_o["feedback1"]) + W * ref.mean()
    np.testing.assert_allclose(float(total_c), expected_total, rtol=1e-5)


def test_corrected_rewards_a_right_probability_the_official_does_not():
    """With updated_feedback2 equal to the ground truth, the official term still sees sigmoid(0) = 0.5 and
    sigmoid(1) = 0.73 and stays large; the corrected term drops to the clip level. Wrong everywhere: the
    corrected term is -log(PROB_CLIP)."""
    out, gt = _batch(2)
    gt = jnp.where(gt < 0, 0.0, gt)
    right = dict(out, updated_feedback2=gt)
    wrong = dict(out, updated_feedback2=1.0 - gt)
    off_right = float(fcfi_loss(right, gt, W)[1]["feedback2"])
    off_wrong = float(fcfi_loss(wrong, gt, W)[1]["feedback2"])
    cor_right = float(fcfi_loss(right, gt, W, feedback2="corrected")[1]["feedback2"])
    cor_wrong = float(fcfi_loss(wrong, gt, W, feedback2="corrected")[1]["feedback2"])
    assert off_right > 0.2                       # the official term cannot tell a perfect map ...
    assert off_wrong / off_right < 2.0           # ... from a perfectly wrong one by much
    assert 0 < cor_right < 2 * PROB_CLIP        # -log(1 - PROB_CLIP), up to float32 rounding of 1 - PROB_CLIP
    np.testing.assert_allclose(cor_wrong, -np.log(PROB_CLIP), rtol=1e-3)   # float32 1 - PROB_CLIP


def test_corrected_gradient_and_ignore():
    out, gt = _batch(3)
    p = out["updated_feedback2"]
    g = jax.grad(lambda q: jnp.sum(probability_bce(q, gt)))(p)
    p64, gt64 = np.asarray(p, np.float64), np.asarray(gt, np.float64)
    valid = gt64 != -1
    n = valid.reshape(len(p64), -1).sum(1)[:, None, None, None]
    y = (gt64 > 0.5).astype(np.float64)
    ref = np.where(valid, (p64 - y) / (p64 * (1 - p64)) / n, 0.0)
    np.testing.assert_allclose(np.asarray(g), ref, rtol=1e-4, atol=1e-7)
    assert np.all(np.asarray(g)[np.asarray(gt) == -1] == 0)  # ignore pixels get no gradient


def test_unknown_variant_is_refused():
    out, gt = _batch()
    with pytest.raises(ValueError, match="feedback2='bce' must be one of official, corrected"):
        fcfi_loss(out, gt, W, feedback2="bce")
