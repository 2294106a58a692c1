"""FCFI's two feedback modules (isegm/model/modeling/fcfi/), with static shapes.

FFCM (FocusedCorrectionModule): corrects the previous mask inside a box around the newest
click using the cosine affinity of an encoded feature map to the click's feature.
CFFM (CollaborativeFeedbackFusionModule): fuses the corrected feedback with the deep
features and predicts a gated residual for them.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from fcfi_jax.models.layers import Conv2d, ConvBNReLU, XConvBNReLU, accum_dtype, apply_mask, resize_ac
from fcfi_jax.models.rounding import div_f32
from fcfi_jax.ops import REFERENCE


def ffcm_half_size(expansion_ratio: float, fb_h: int, fb_w: int) -> tuple[int, int]:
    """Half box size in input pixels: int(e * H / 2 + 0.5) in Python float64, as the official code."""
    return int(expansion_ratio * fb_h / 2 + 0.5), int(expansion_ratio * fb_w / 2 + 0.5)


def ffcm_box(py, px, half_h, half_w, fbh, fbw, fth, ftw):
    """The official get_crop_locations / resize_points / resize_locations, in float32 (docs/official_quirks.md #7, #8):
    the click at feature resolution and its box there.

    py, px (B,) click in whole input pixels (the official clicks are integers); half_* the box half size; fb*,
    ft* the input and feature sizes (all float32). Returns yf, xf (B,) int32 and box (B, 4) int32
    (Y0, X0, Y1, X1), with Y0 <= yf < Y1. The quotients of whole numbers are IEEE-rounded on every backend
    (`rounding.div_f32`), as PyTorch's float32 division is; a one-ulp error would move a box edge by a pixel.
    """
    # Full-resolution box, clipped, then truncated like `.long()`.
    y0 = jnp.trunc(jnp.maximum(py - half_h, 0.0))
    x0 = jnp.trunc(jnp.maximum(px - half_w, 0.0))
    y1 = jnp.trunc(jnp.minimum(py + half_h, fbh))
    x1 = jnp.trunc(jnp.minimum(px + half_w, fbw))
    # Click and box at feature resolution (float32 divide then multiply, as the official code).
    yf = jnp.trunc(div_f32(py, fbh) * fth).astype(jnp.int32)
    xf = jnp.trunc(div_f32(px, fbw) * ftw).astype(jnp.int32)
    box = jnp.stack([
        jnp.maximum(jnp.floor(div_f32(y0, fbh) * fth), 0.0),
        jnp.maximum(jnp.floor(div_f32(x0, fbw) * ftw), 0.0),
        jnp.minimum(jnp.ceil(div_f32(y1, fbh) * fth), fth),
        jnp.minimum(jnp.ceil(div_f32(x1, fbw) * ftw), ftw),
    ], axis=1).astype(jnp.int32)
    return yf, xf, box


def ffcm_window(expan_ratio: float, ft_size: int, halo: int) -> int:
    """Static length (along one axis, feature pixels) of a window that holds any inference box plus `halo`
    pixels on each side, for maps of at most `ft_size` pixels.

    A box spans ceil(y1 s) - floor(y0 s) < (y1 - y0) s + 2 pixels (s = ft / fb <= 1) with
    y1 - y0 <= 2 half <= e fb + 1, i.e. fewer than e ft + 3: e ft + 4 leaves room for float32 rounding
    (`tests/test_ffcm_window.py` checks the bound on every click position of many sizes).
    """
    return min(ft_size, int(math.floor(expan_ratio * ft_size)) + 4 + 2 * halo)


def crop(x, sy, sx, win):
    """Per batch element the (win[0], win[1]) window of x (B, H, W, C) starting at (sy[b], sx[b])."""
    size = (win[0], win[1], x.shape[-1])
    return jax.vmap(lambda a, y, x0: jax.lax.dynamic_slice(a, (y, x0, jnp.zeros_like(y)), size))(x, sy, sx)


def paste(x, patch, sy, sx):
    """x with each batch element's `patch` written at (sy[b], sx[b]) (the inverse of `crop`)."""
    return jax.vmap(lambda a, q, y, x0: jax.lax.dynamic_update_slice(a, q, (y, x0, jnp.zeros_like(y))))(
        x, patch, sy, sx)


def _affinity(u, yf, xf, dtype):
    """Official update_single_feedback (docs/official_quirks.md #10): cosine affinity of each pixel of U (B, h, w, M)
    to the pixel (yf[b], xf[b]) -> (B, h, w, 1).
    Normalised with F.normalize (eps 1e-12), in float32 at least (float64 in the float64 mode)."""
    u = u.astype(accum_dtype(u.dtype))
    u = u / jnp.maximum(jnp.sqrt(jnp.sum(u * u, axis=-1, keepdims=True)), 1e-12)
    u_click = u[jnp.arange(u.shape[0]), yf, xf]  # (B, M)
    # A channel reduction, not a dot: XLA:CPU would transpose u for a (1 x C) @ (C x hw) matmul.
    return jnp.sum(u * u_click[:, None, None, :], axis=-1, keepdims=True).astype(dtype)


def soft_box_mask(ft_hw, box):
    """Training box mask (docs/official_quirks.md #9): [s(r - Y0) - s(r - Y1)] * [s(c - X0) - s(c - X1)], s = sigmoid(10 t).

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
    """Inference box (docs/official_quirks.md #9): the half-open [Y0, Y1) x [X0, X1) as a boolean (B, h, w, 1) map."""
    h, w = ft_hw
    r = jnp.arange(h)[None, :, None]
    c = jnp.arange(w)[None, None, :]
    inside = ((r >= box[:, 0, None, None]) & (r < box[:, 2, None, None])
              & (c >= box[:, 1, None, None]) & (c < box[:, 3, None, None]))
    return inside[..., None]


class FocusedCorrectionModule(nnx.Module):
    """FFCM. Keys: `info_encoder.{0,1,2}`.

    At inference the encoder runs on a window around the box only (`windowed`, the default): the official code
    encodes the whole map and then crops the box, so both give the same box up to float summation order.
    """

    def __init__(self, in_ch: int, mid_ch: int, aux_ch: int = 6, expan_ratio: float = 2.0, *, rngs: nnx.Rngs):
        self.expan_ratio = expan_ratio
        self.windowed = True
        self.kernels = REFERENCE
        self.info_encoder = nnx.List([
            ConvBNReLU(in_ch + aux_ch, mid_ch, rngs=rngs),
            XConvBNReLU(mid_ch, mid_ch, rngs=rngs),
            XConvBNReLU(mid_ch, mid_ch, rngs=rngs),
        ])

    @property
    def halo(self) -> int:
        """Receptive-field radius of the info encoder (3: three 3x3 convolutions)."""
        convs = [layer.conv if isinstance(layer, ConvBNReLU) else layer.conv3x3 for layer in self.info_encoder]
        return sum(c.weight.shape[0] // 2 * c.dilation for c in convs)

    def window(self, ft_hw) -> tuple[int, int] | None:
        """Static (h, w) of the inference window for maps of `ft_hw`; None (encode the whole map) when windows are
        off or would cover more than half of the map."""
        if not self.windowed:
            return None
        win = tuple(ffcm_window(self.expan_ratio, n, self.halo) for n in ft_hw)
        return None if win[0] * win[1] > 0.5 * ft_hw[0] * ft_hw[1] else win

    def encode(self, x, hw=None):
        for layer in self.info_encoder:
            x = layer(x, hw)
        return x

    def __call__(self, images, click_encoding, features, feedback, new_points, *, soft_box: bool, geom=None):
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
        win = None if soft_box else self.window((ft_h, ft_w))
        crop_, paste_ = self.kernels.crop or crop, self.kernels.paste or paste
        for k in range(new_points.shape[1]):
            p = new_points[:, k].astype(jnp.float32)  # (B, 3)
            label = jnp.trunc(p[:, 2])
            yf, xf, box = ffcm_box(p[:, 0], p[:, 1], half_h_f, half_w_f, fbh_f, fbw_f, fth_f, ftw_f)

            # Resized one by one and stacked at feature resolution (a full-resolution stack is one more pass).
            images, click_encoding, feedback_rs = (resize_ac(t, (ft_h, ft_w), in_hw, ft_hw_true, self.kernels.lerp)
                                                   for t in (images, click_encoding, feedback))
            small = jnp.concatenate([images, click_encoding, feedback_rs], axis=-1)
            in_hw = ft_hw_true
            lab = label[:, None, None, None].astype(feedback_rs.dtype)

            if win is None:
                u = self.encode(jnp.concatenate([small, features], axis=-1), ft_hw_true)
                affinity = _affinity(u, yf, xf, feedback_rs.dtype)
            else:
                # Inference uses U only inside the box and at the click (inside it): encode a window holding the
                # box and the encoder's receptive field around it (a static size, ~13% of the map for e = 0.3).
                sy = jnp.clip(box[:, 0] - self.halo, 0, ft_h - win[0])  # (B,)
                sx = jnp.clip(box[:, 1] - self.halo, 0, ft_w - win[1])
                hw_win = None if ft_hw_true is None else ft_hw_true[None, :] - jnp.stack([sy, sx], axis=1)  # (B, 2)
                x = jnp.concatenate([crop_(small, sy, sx, win), crop_(features, sy, sx, win)], axis=-1)
                affinity = _affinity(self.encode(x, hw_win), yf - sy, xf - sx, feedback_rs.dtype)
                box = box - jnp.stack([sy, sx, sy, sx], axis=1)
            if soft_box:
                valid_mask = soft_box_mask((ft_h, ft_w), box)
                m = valid_mask.astype(feedback_rs.dtype)
                feedback = (1 - m) * feedback_rs + m * (affinity * lab + (1 - affinity) * feedback_rs)
            elif win is None:
                inside = hard_box_mask((ft_h, ft_w), box)
                feedback = jnp.where(inside, (1 - affinity) * feedback_rs + affinity * lab, feedback_rs)
            else:
                fb = crop_(feedback_rs, sy, sx, win)
                patch = jnp.where(hard_box_mask(win, box), (1 - affinity) * fb + affinity * lab, fb)
                feedback = paste_(feedback_rs, patch, sy, sx)
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
        # The official loop fuses the same `feedback` every iteration (docs/official_quirks.md #11).
        for _ in range(update_num):
            u = jnp.concatenate([feedback, self.feature_conv(features, hw)], axis=-1)
            for layer in self.fusion_encoder:
                u = layer(u, hw)
            u = apply_mask(jax.nn.sigmoid(u), hw)
            residual = self.residual_predictor([features, u], hw)  # 1x1 conv of the concatenation
            features = features + gate * residual
        return features, u
