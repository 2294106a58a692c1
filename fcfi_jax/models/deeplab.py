"""DeepLabV3+ (ResNet V1s backbone, ASPP 12/24/36) with FFCM/CFFM (isegm/model/modeling/deeplab_v3.py)."""
from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from fcfi_jax.models.fcfi_modules import CollaborativeFeedbackFusionModule, FocusedCorrectionModule
from fcfi_jax.models.layers import BatchNorm2d, Conv2d, ConvBN, Holder, apply_mask, relu, resize_ac
from fcfi_jax.models.resnet import ResNetBackbone
from fcfi_jax.ops import REFERENCE


class SeparableConv2d(nnx.Module):
    """depthwise 3x3 (no bias) -> 1x1 (no bias) -> BN -> ReLU. Keys `body.{0,1,2}`."""

    def __init__(self, in_ch, out_ch, *, rngs):
        self.body = nnx.List([Conv2d(in_ch, in_ch, 3, 1, 1, groups=in_ch, bias=False, rngs=rngs),
                              Conv2d(in_ch, out_ch, 1, bias=False, rngs=rngs), BatchNorm2d(out_ch)])

    def __call__(self, x, hw=None):
        dw, pw, bn = self.body
        return relu(bn(pw(dw(x, hw), hw), hw))


class ASPP(nnx.Module):
    """Keys: `concurent.{0..3}.{0,1}` (1x1 and dilated 3x3 branches), `concurent.4.gap.{1,2}`, `project.{0,1}`."""

    def __init__(self, in_ch, rates=(12, 24, 36), out_ch=256, dropout=0.5, *, rngs):
        branches = [ConvBN(in_ch, out_ch, 1, act=True, rngs=rngs)]
        for r in rates:
            branches.append(ConvBN(in_ch, out_ch, 3, 1, r, act=True, dilation=r, rngs=rngs))
        branches.append(Holder(gap=nnx.List([None, Conv2d(in_ch, out_ch, 1, bias=False, rngs=rngs),
                                             BatchNorm2d(out_ch)])))
        self.concurent = nnx.List(branches)
        self.project = ConvBN(5 * out_ch, out_ch, 1, act=True, rngs=rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs) if dropout > 0 else None

    def __call__(self, x, hw=None):
        outs = [b(x, hw) for b in list(self.concurent)[:4]]
        # Global average pooling over the valid region, then broadcast (the 1x1 -> HxW AC resize).
        if hw is None:
            pooled = jnp.mean(x, axis=(1, 2), keepdims=True)
        else:
            pooled = jnp.sum(x, axis=(1, 2), keepdims=True) / (hw[0] * hw[1]).astype(x.dtype)
        _, conv, bn = self.concurent[4].gap
        g = relu(bn(conv(pooled)))
        outs.append(apply_mask(jnp.broadcast_to(g, x.shape[:3] + g.shape[-1:]), hw))
        y = self.project(jnp.concatenate(outs, axis=-1), hw)
        return y if self.dropout is None else self.dropout(y)


class DeepLabV3Plus(nnx.Module):
    """Keys follow the official `feature_extractor` (backbone, skip_project, aspp, head, correction_module,
    feedback_fusion)."""

    def __init__(self, backbone="resnet101", ch=256, mid_ch=64, update_num=1, expansion_ratio=2.0,
                 project_dropout=0.5, *, rngs):
        if backbone == "resnet34":
            raise ValueError("the resnet34 (v1b, 7x7 stem) DeepLab backbone is not implemented; "
                             "use resnet50/101/152")
        self.kernels = REFERENCE
        self.update_num = update_num
        self.backbone = ResNetBackbone(backbone, rngs=rngs)
        self.skip_project = Holder(skip_project=ConvBN(256, 32, 1, act=True, rngs=rngs))
        self.aspp = ASPP(2048, (12, 24, 36), ch, project_dropout, rngs=rngs)
        self.head = Holder(block=nnx.List([SeparableConv2d(ch + 32, ch, rngs=rngs),
                                           SeparableConv2d(ch, ch, rngs=rngs), Conv2d(ch, ch, 1, rngs=rngs)]))
        self.correction_module = FocusedCorrectionModule(ch, mid_ch, 6, expansion_ratio, rngs=rngs)
        self.feedback_fusion = CollaborativeFeedbackFusionModule(ch, mid_ch, rngs=rngs)

    def __call__(self, image, click_encoding, new_points, feedback, gate, coord_features, *,
                 soft_box: bool, hw=None, geom=None):
        c1, c4, (hw4, hw8) = self.backbone(image, coord_features, hw)
        c1 = self.skip_project.skip_project(c1, hw4)
        x = resize_ac(self.aspp(c4, hw8), c1.shape[1:3], hw8, hw4, self.kernels.lerp)
        uf1, valid = self.correction_module(image, click_encoding, x, feedback, new_points,
                                            soft_box=soft_box, geom=geom)
        x, uf2 = self.feedback_fusion(x, uf1, gate, self.update_num, hw4)
        x = jnp.concatenate([x, c1], axis=-1)
        sep1, sep2, conv = self.head.block
        x = sep1(x, hw4)
        x = sep2(x, hw4)
        x = conv(x, hw4)
        return dict(features=x, updated_feedback1=uf1, valid_masks=valid, updated_feedback2=uf2)
