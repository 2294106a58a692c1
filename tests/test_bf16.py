"""The bfloat16 compute mode (GPU/TPU speed option: `compute_dtype=bfloat16` in training, `--dtype bfloat16` in
tools/benchmark.py): its error against float32 is what docs/benchmarks.md states, on a real image.

`hrnet18s_clicky.pth` (trained briefly, so its logits follow the image) on the 480x640 GrabCut golden input with its
three recorded clicks: the bf16 forward's logits differ from float32 by at most MAX_LOGIT_ERR and the masks (logit
> 0) agree on at least MIN_AGREEMENT of the pixels. Measured on this project's CPU: max 0.046 (max |logit| 1.4),
agreement 1.0 (docs/benchmarks.md); bounds at about twice the error.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import fcfi_jax

MAX_LOGIT_ERR = 0.1
MIN_AGREEMENT = 0.9999


def test_bfloat16_forward_error_is_bounded(fixtures_dir):
    model = fcfi_jax.load_model(fixtures_dir / "hrnet18s_clicky.pth")
    golden = np.load(fixtures_dir / "golden_hrnet18s_native.npz")
    graphdef, state = nnx.split(model)

    @functools.partial(jax.jit, static_argnums=4)
    def logits(state, x, p, n, dt):
        return nnx.merge(graphdef, state)(x.astype(dt), p, n, 1.0)["instances"].astype(jnp.float32)

    rgb = golden["image_rgb"] / np.float32(255)
    x = jnp.asarray(np.concatenate([rgb, golden["click2_pred_probs"][..., None]], -1)[None], jnp.float32)
    p, n = jnp.asarray(golden["click3_in_points"]), jnp.asarray(golden["click3_in_new_points"])
    f32 = np.asarray(logits(state, x, p, n, jnp.float32))
    bf16 = np.asarray(logits(state, x, p, n, jnp.bfloat16))
    err = float(np.abs(bf16 - f32).max())
    agreement = float(np.mean((bf16 > 0) == (f32 > 0)))
    print(f"bfloat16 vs float32: max |logit err| {err:.3g} (max |logit| {np.abs(f32).max():.3g}), "
          f"mask agreement {agreement:.6f}")
    assert err <= MAX_LOGIT_ERR and agreement >= MIN_AGREEMENT, (err, agreement)
