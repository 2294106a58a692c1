"""FCFI's two feedback modules (spec section 4), with static shapes.

FFCM (FocusedCorrectionModule): corrects the previous mask inside a box around the newest
click using the cosine affinity of an encoded feature map to the click's feature.
CFFM (CollaborativeFeedbackFusionModule): fuses the corrected feedback with the deep
features and predicts a gated residual for them.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from fcfi_jax.models.layers import ConvBNReLU, Conv2d, XConvBNReLU, apply_mask, resize_ac


def ffcm_half_size(expansion_ratio: float, fb_h: int, fb_w: int) -> tuple[int, int]:
    """Half box size in input pixels: int(e * H / 2 + 0.5) in Python float64, as the official code."""
    return int(expansion_ratio * fb_h / 2 + 0.5), int(expansion_ratio * fb_w / 2 + 0.5)


def soft_box_mask(ft_hw, box):
    """Training box mask (spec 4.4): [s(r - Y0) - s(r - Y1)] * [s(c - X0) - s(c - X1)], s = sigmoid(10 t).

    box: (B, 4) int32 (Y0, X0, Y1, X1) at feature resolution. Returns (B, h, w, 1) float32.
    """
    h, w = ft_hw
    s = lambda t: 1.0 / (1.0 + jnp.exp(-10.0 * t))
    r = jnp.arange(h, dtype=jnp.float32)[None, :, None]
    c = jnp.arange(w, dtype=jnp.float32)[None, None, :]
    b = box.astype(jnp.float32)
    my = s(r - b[:, 0, None, None]) - s(r - b[:, 2, None, None])  # (B, h, 1)
    mx = s(c - b[:, 1, None, None]) - s(c - b[:, 3, None, None])  # (B, 1, w)
    return (my * mx)[..., None]


def hard_box_mask(ft_hw, box):
    """Inference box (spec 4.5): the half-open [Y0, Y1) x [X0, X1) as a boolean (B, h, w, 1) map."""
    h, w = ft_hw
    r = jnp.arange(h)[None, :, None]
    c = jnp.arange(w)[None, None, :]
    inside = ((r >= box[:, 0, None, None]) & (r < box[:, 2, None, None])
              & (c >= box[:, 1, None, None]) & (c < box[:, 3, None, None]))
    return inside[..., None]


class FocusedCorrectionModule(nnx.Module):
    """FFCM. Keys: `info_encoder.{0,1,2}`."""

    def __init__(self, in_ch: int, mid_ch: int, aux_ch: int = 6, expan_ratio: float = 2.0, *, rngs: nnx.Rngs):
        self.expan_ratio = expan_ratio
        self.info_encoder = nnx.List([
            ConvBNReLU(in_ch + aux_ch, mid_ch, rngs=rngs),
            XConvBNReLU(mid_ch, mid_ch, rngs=rngs),
            XConvBNReLU(mid_ch, mid_ch, rngs=rngs),
        ])

    def encode(self, x, hw=None):
        for layer in self.info_encoder:
            x = layer(x, hw)
        return x

    def __call__(self, images, click_encoding, features, feedback, new_points, *, is_training: bool,
                 geom=None):
        """Correct `feedback` around the newest click(s).

        images (B, H, W, 3) normalized RGB; click_encoding (B, H, W, A-4); features (B, h, w, C);
        feedback (B, H, W, 1); new_points (B, K, 3) float (y, x, label), slot 0 first.
        geom: None for exact shapes, else a dict of traced int32 scalars `fb_hw`, `ft_hw` (true
        sizes) and `half` (box half size from `ffcm_half_size`).
        Returns (updated feedback (B, h, w, 1), soft box mask (B, h, w, 1) or None).
        """
        ft_h, ft_w = features.shape[1:3]
        if geom is None:
            fb_h, fb_w = feedback.shape[1:3]
            half_h, half_w = ffcm_half_size(self.expan_ratio, fb_h, fb_w)
            fb_hw = ft_hw_true = None
            fbh_f, fbw_f = jnp.float32(fb_h), jnp.float32(fb_w)
            fth_f, ftw_f = jnp.float32(ft_h), jnp.float32(ft_w)
        else:
            fb_hw, ft_hw_true = geom["fb_hw"], geom["ft_hw"]
            half_h, half_w = geom["half"][0], geom["half"][1]
            fbh_f, fbw_f = fb_hw[0].astype(jnp.float32), fb_hw[1].astype(jnp.float32)
            fth_f, ftw_f = ft_hw_true[0].astype(jnp.float32), ft_hw_true[1].astype(jnp.float32)
        half_h_f = jnp.asarray(half_h, jnp.float32)
        half_w_f = jnp.asarray(half_w, jnp.float32)

        in_hw = fb_hw
        valid_mask = None
        for k in range(new_points.shape[1]):
            p = new_points[:, k].astype(jnp.float32)  # (B, 3)
            py, px = p[:, 0], p[:, 1]
            label = jnp.trunc(p[:, 2])
            # Full-resolution box, clipped, then truncated like `.long()`.
            y0 = jnp.trunc(jnp.maximum(py - half_h_f, 0.0))
            x0 = jnp.trunc(jnp.maximum(px - half_w_f, 0.0))
            y1 = jnp.trunc(jnp.minimum(py + half_h_f, fbh_f))
            x1 = jnp.trunc(jnp.minimum(px + half_w_f, fbw_f))
            # Click and box at feature resolution (float32 divide then multiply, as the official code).
            yf = jnp.trunc(py / fbh_f * fth_f).astype(jnp.int32)
            xf = jnp.trunc(px / fbw_f * ftw_f).astype(jnp.int32)
            box = jnp.stack([
                jnp.maximum(jnp.floor(y0 / fbh_f * fth_f), 0.0),
                jnp.maximum(jnp.floor(x0 / fbw_f * ftw_f), 0.0),
                jnp.minimum(jnp.ceil(y1 / fbh_f * fth_f), fth_f),
                jnp.minimum(jnp.ceil(x1 / fbw_f * ftw_f), ftw_f),
            ], axis=1).astype(jnp.int32)  # (B, 4)

            # One resize of the stacked maps (per-channel, so identical to three resizes).
            ci, cc = images.shape[-1], click_encoding.shape[-1]
            small = resize_ac(jnp.concatenate([images, click_encoding, feedback], axis=-1), (ft_h, ft_w), in_hw,
                              ft_hw_true)
            images, click_encoding, feedback_rs = small[..., :ci], small[..., ci:ci + cc], small[..., ci + cc:]
            in_hw = ft_hw_true

            u = self.encode(jnp.concatenate([images, click_encoding, feedback_rs, features], axis=-1), ft_hw_true)
            # Cosine affinity to the click's encoded feature (F.normalize, eps 1e-12), in float32 in any case.
            u = u.astype(jnp.float32)
            u = u / jnp.maximum(jnp.sqrt(jnp.sum(u * u, axis=-1, keepdims=True)), 1e-12)
            b_idx = jnp.arange(u.shape[0])
            u_click = u[b_idx, yf, xf]  # (B, M)
            # A channel reduction, not a dot: XLA:CPU would transpose u for a (1 x C) @ (C x hw) matmul.
            affinity = jnp.sum(u * u_click[:, None, None, :], axis=-1, keepdims=True)
            affinity = affinity.astype(feedback_rs.dtype)
            lab = label[:, None, None, None].astype(feedback_rs.dtype)
            if is_training:
                valid_mask = soft_box_mask((ft_h, ft_w), box)
                m = valid_mask.astype(feedback_rs.dtype)
                feedback = (1 - m) * feedback_rs + m * (affinity * lab + (1 - affinity) * feedback_rs)
            else:
                inside = hard_box_mask((ft_h, ft_w), box)
                feedback = jnp.where(inside, (1 - affinity) * feedback_rs + affinity * lab, feedback_rs)
        return apply_mask(feedback, ft_hw_true), valid_mask


class CollaborativeFeedbackFusionModule(nnx.Module):
    """CFFM. Keys: `feature_conv`, `fusion_encoder.{0,1,2,3}`, `residual_predictor`."""

    def __init__(self, in_ch: int, mid_ch: int, *, rngs: nnx.Rngs):
        self.feature_conv = ConvBNReLU(in_ch, mid_ch, kernel_size=1, padding=0, rngs=rngs)
        self.fusion_encoder = nnx.List([
            ConvBNReLU(1 + mid_ch, mid_ch, rngs=rngs),
            XConvBNReLU(mid_ch, mid_ch, rngs=rngs),
            XConvBNReLU(mid_ch, mid_ch, rngs=rngs),
            Conv2d(mid_ch, 1, 3, 1, 1, bias=True, rngs=rngs),
        ])
        self.residual_predictor = ConvBNReLU(in_ch + 1, 1, kernel_size=1, padding=0, rngs=rngs)

    def __call__(self, features, feedback, gate, update_num: int = 1, hw=None):
        """features (B, h, w, C), feedback (B, h, w, 1) -> (updated features, uf2 probabilities)."""
        # The official loop fuses the same `feedback` every iteration (spec 4.8 quirk).
        for _ in range(update_num):
            u = jnp.concatenate([feedback, self.feature_conv(features, hw)], axis=-1)
            for layer in self.fusion_encoder:
                u = layer(u, hw)
            u = apply_mask(jax.nn.sigmoid(u), hw)
            residual = self.residual_predictor([features, u], hw)  # 1x1 conv of the concatenation
            features = features + gate * residual
        return features, u
