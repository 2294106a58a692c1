"""HRNet + OCR feature extractor with FFCM and CFFM inserted (isegm/model/modeling/hrnet_ocr.py).

Differences from textbook HRNet reproduced on purpose: no ReLU after the multi-resolution
fusion (docs/official_quirks.md #2); FFCM/CFFM act on the aggregated features before the OCR head.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from fcfi_jax.models.fcfi_modules import CollaborativeFeedbackFusionModule, FocusedCorrectionModule
from fcfi_jax.models.layers import (
    BatchNorm2d,
    Conv2d,
    ConvBN,
    accum_dtype,
    conv_bn,
    down2,
    relu,
    resize_ac,
    valid_mask,
)
from fcfi_jax.models.resnet import BasicBlockV1b, BottleneckV1b, make_layer, run_layer
from fcfi_jax.ops import REFERENCE


class HighResolutionModule(nnx.Module):
    """Parallel branches of BasicBlocks followed by all-to-all fusion (sum, no ReLU).

    Keys: `branches.i.k.*`, `fuse_layers.i.j.*` (j > i: 1x1 conv + BN then upsample;
    j < i: chain of stride-2 3x3 conv + BN (+ ReLU except the last)).
    """

    def __init__(self, channels: list[int], num_blocks: int, *, rngs):
        n = len(channels)
        self.kernels = REFERENCE
        self.branches = nnx.List([
            nnx.List([BasicBlockV1b(c, c, rngs=rngs) for _ in range(num_blocks)]) for c in channels])
        fuse = []
        for i in range(n):
            row = []
            for j in range(n):
                if j > i:
                    row.append(ConvBN(channels[j], channels[i], 1, rngs=rngs))
                elif j == i:
                    row.append(None)
                else:
                    chain = []
                    for k in range(i - j):
                        last = k == i - j - 1
                        chain.append(ConvBN(channels[j], channels[i] if last else channels[j], 3, 2, 1,
                                            act=not last, rngs=rngs))
                    row.append(nnx.List(chain))
            fuse.append(nnx.List(row))
        self.fuse_layers = nnx.List(fuse)

    def __call__(self, xs, hws):
        xs = [run_layer(branch, x, hw)[0] for branch, x, hw in zip(self.branches, xs, hws)]
        out = []
        for i, row in enumerate(self.fuse_layers):
            y = None
            for j, layer in enumerate(row):
                if j == i:
                    t = xs[j]
                elif j > i:
                    t = resize_ac(layer(xs[j], hws[j]), xs[i].shape[1:3], hws[j], hws[i], self.kernels.lerp)
                else:
                    t, hw = xs[j], hws[j]
                    for conv in layer:
                        t = conv(t, hw)
                        hw = down2(hw)
                y = t if y is None else y + t
            out.append(y)
        return out


def _bn_relu(ch):
    """`nn.Sequential(BN, ReLU)` as nested in the OCR blocks (keys `<i>.0.*`)."""
    return nnx.List([BatchNorm2d(ch)])


def _conv_bn_relu(conv, bnr, x, hw):
    return relu(bnr[0](conv(x, hw), hw))


class ObjectAttentionBlock(nnx.Module):
    """OCR object attention with one class: the softmax over a single key is identically 1, so the
    output is f_up(f_down(context)) broadcast to every pixel (docs/official_quirks.md #5). f_pixel/f_object are kept
    for loading and still run in train mode, where their BatchNorm statistics update."""

    def __init__(self, in_ch, key_ch, *, rngs):
        def two_layer():
            return nnx.List([Conv2d(in_ch, key_ch, 1, bias=False, rngs=rngs), _bn_relu(key_ch),
                             Conv2d(key_ch, key_ch, 1, bias=False, rngs=rngs), _bn_relu(key_ch)])
        self.f_pixel = two_layer()
        self.f_object = two_layer()
        self.f_down = nnx.List([Conv2d(in_ch, key_ch, 1, bias=False, rngs=rngs), _bn_relu(key_ch)])
        self.f_up = nnx.List([Conv2d(key_ch, in_ch, 1, bias=False, rngs=rngs), _bn_relu(in_ch)])
        self.use_running_average = True  # NNX's eval mode (model.eval() / model.train() set it)

    def __call__(self, x, proxy, hw=None):
        train = not self.use_running_average
        if train:  # outputs unused (sim == 1) but PyTorch updates these BatchNorm statistics.
            for seq, inp in ((self.f_pixel, x), (self.f_object, proxy)):
                t = _conv_bn_relu(seq[0], seq[1], inp, None)
                _conv_bn_relu(seq[2], seq[3], t, None)
        value = _conv_bn_relu(self.f_down[0], self.f_down[1], proxy, None)  # (B, 1, 1, key)
        if train:  # BN over the broadcast map, as PyTorch sees it
            value = jnp.broadcast_to(value, x.shape[:3] + value.shape[-1:])
            return _conv_bn_relu(self.f_up[0], self.f_up[1], value, None)
        # Eval: the (B, 1, 1, C) context itself; SpatialOCRModule's 1x1 conv broadcasts it (no H x W copy).
        return _conv_bn_relu(self.f_up[0], self.f_up[1], value, None)


class SpatialOCRModule(nnx.Module):
    def __init__(self, in_ch, key_ch, out_ch, dropout, *, rngs):
        self.object_context_block = ObjectAttentionBlock(in_ch, key_ch, rngs=rngs)
        self.conv_bn_dropout = nnx.List([Conv2d(2 * in_ch, out_ch, 1, bias=False, rngs=rngs), _bn_relu(out_ch)])
        self.dropout = nnx.Dropout(dropout, broadcast_dims=(1, 2), rngs=rngs)  # Dropout2d: whole channels

    def __call__(self, feats, proxy, hw=None):
        ctx = self.object_context_block(feats, proxy, hw)
        out = _conv_bn_relu(self.conv_bn_dropout[0], self.conv_bn_dropout[1], [ctx, feats], hw)  # 1x1 of the concat
        return self.dropout(out)


def spatial_gather(feats, logits, hw=None):
    """OCR context: softmax of the aux logits over all pixels, weighted sum of feats -> (B, 1, 1, C)."""
    b, h, w, c = feats.shape
    lg = logits.reshape(b, h * w)
    if hw is not None:
        lg = jnp.where(valid_mask((h, w), hw, jnp.bool_).reshape(1, h * w), lg, -jnp.inf)
    dt = accum_dtype(feats.dtype)  # a sum over all pixels: float32 at least
    probs = jax.nn.softmax(lg.astype(dt), axis=-1)
    ctx = jnp.einsum("bp,bpc->bc", probs, feats.reshape(b, h * w, c).astype(dt),
                     precision=jax.lax.Precision.HIGHEST)
    return ctx[:, None, None, :].astype(feats.dtype)


class HighResolutionNet(nnx.Module):
    """HRNet-W{width} (+OCR) with FFCM/CFFM. Key names follow the official `feature_extractor`."""

    def __init__(self, width: int, num_classes: int, aux_ch: int, ocr_width: int = 256, mid_ch: int = 32,
                 small: bool = False, update_num: int = 1, expansion_ratio: float = 2.0, *, rngs):
        self.kernels = REFERENCE
        self.update_num = update_num
        self.ocr_width = ocr_width
        nb = 2 if small else 4
        self.conv1 = Conv2d(3, 64, 3, 2, 1, bias=False, rngs=rngs)
        self.bn1 = BatchNorm2d(64)
        self.conv2 = Conv2d(64, 64, 3, 2, 1, bias=False, rngs=rngs)
        self.bn2 = BatchNorm2d(64)
        self.layer1 = make_layer(BottleneckV1b, 64, 64, nb, rngs=rngs)
        ch = [width, 2 * width, 4 * width, 8 * width]
        self.transition1 = nnx.List([ConvBN(256, ch[0], 3, 1, 1, act=True, rngs=rngs),
                                     nnx.List([ConvBN(256, ch[1], 3, 2, 1, act=True, rngs=rngs)])])
        self.stage2 = nnx.List([HighResolutionModule(ch[:2], nb, rngs=rngs)])
        self.transition2 = nnx.List([None, None, nnx.List([ConvBN(ch[1], ch[2], 3, 2, 1, act=True, rngs=rngs)])])
        self.stage3 = nnx.List([HighResolutionModule(ch[:3], nb, rngs=rngs) for _ in range(3 if small else 4)])
        self.transition3 = nnx.List([None, None, None,
                                     nnx.List([ConvBN(ch[2], ch[3], 3, 2, 1, act=True, rngs=rngs)])])
        self.stage4 = nnx.List([HighResolutionModule(ch, nb, rngs=rngs) for _ in range(2 if small else 3)])
        last = sum(ch)
        if ocr_width > 0:
            mid, key = 2 * ocr_width, ocr_width
            self.conv3x3_ocr = nnx.List([Conv2d(last, mid, 3, 1, 1, rngs=rngs), BatchNorm2d(mid)])
            self.ocr_distri_head = SpatialOCRModule(mid, key, mid, 0.05, rngs=rngs)
            self.cls_head = Conv2d(mid, num_classes, 1, rngs=rngs)
            self.aux_head = nnx.List([Conv2d(last, last, 1, rngs=rngs), BatchNorm2d(last), None,
                                      Conv2d(last, num_classes, 1, rngs=rngs)])
        else:
            self.cls_head = nnx.List([Conv2d(last, last, 3, 1, 1, rngs=rngs), BatchNorm2d(last), None,
                                      Conv2d(last, num_classes, 1, rngs=rngs)])
        self.correction_module = FocusedCorrectionModule(last, mid_ch, aux_ch, expansion_ratio, rngs=rngs)
        self.fusion_module = CollaborativeFeedbackFusionModule(last, mid_ch, rngs=rngs)

    def backbone(self, image, coord_features, hw=None):
        """Stem (click features added after the first conv) + stages -> aggregated (B, h, w, 15w)."""
        hw2 = down2(hw)
        x = conv_bn(self.conv1, self.bn1, image, hw, act=True) + coord_features
        hw4 = down2(hw2)
        x = conv_bn(self.conv2, self.bn2, x, hw2, act=True)
        x, _ = run_layer(self.layer1, x, hw4)
        hws = [hw4, down2(hw4), down2(down2(hw4)), down2(down2(down2(hw4)))]
        xs = [self.transition1[0](x, hw4), self.transition1[1][0](x, hw4)]
        for m in self.stage2:
            xs = m(xs, hws[:2])
        xs = xs + [self.transition2[2][0](xs[-1], hws[1])]
        for m in self.stage3:
            xs = m(xs, hws[:3])
        xs = xs + [self.transition3[3][0](xs[-1], hws[2])]
        for m in self.stage4:
            xs = m(xs, hws)
        size = xs[0].shape[1:3]
        ups = [resize_ac(x, size, h, hw4, self.kernels.lerp) for x, h in zip(xs[1:], hws[1:])]
        return jnp.concatenate([xs[0]] + ups, axis=-1), hw4

    def __call__(self, image, click_encoding, new_points, feedback, gate, coord_features, *,
                 soft_box: bool, hw=None, geom=None):
        feats, hw4 = self.backbone(image, coord_features, hw)
        uf1, valid = self.correction_module(image, click_encoding, feats, feedback, new_points,
                                            soft_box=soft_box, geom=geom)
        feats, uf2 = self.fusion_module(feats, uf1, gate, self.update_num, hw4)
        if self.ocr_width > 0:
            conv1, bn, _, conv2 = self.aux_head   # official aux_head.{0, 1, 2 (ReLU), 3}
            out_aux = relu(bn(conv1(feats, hw4), hw4))
            out_aux = conv2(out_aux, hw4)
            f = conv_bn(self.conv3x3_ocr[0], self.conv3x3_ocr[1], feats, hw4, act=True)
            context = spatial_gather(f, out_aux, hw4)
            f = self.ocr_distri_head(f, context, hw4)
            out = self.cls_head(f, hw4)
        else:
            conv1, bn, _, conv2 = self.cls_head
            out = conv2(conv_bn(conv1, bn, feats, hw4, act=True), hw4)
            out_aux = None
        return dict(instances=out, instances_aux=out_aux, updated_feedback1=uf1, valid_masks=valid,
                    updated_feedback2=uf2)
