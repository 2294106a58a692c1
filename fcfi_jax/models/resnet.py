"""ResNet V1b/V1s blocks and the dilated (output stride 8) backbone of the DeepLab family."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from fcfi_jax.models.layers import BatchNorm2d, Conv2d, ConvBN, apply_mask, conv_bn, down2
from fcfi_jax.ops import REFERENCE


class BasicBlockV1b(nnx.Module):
    """conv3x3 -> BN -> ReLU -> conv3x3 -> BN, + identity -> ReLU (used by HRNet branches)."""

    expansion = 1

    def __init__(self, inplanes, planes, stride=1, dilation=1, downsample=None, previous_dilation=1, *, rngs):
        self.conv1 = Conv2d(inplanes, planes, 3, stride, dilation, dilation, bias=False, rngs=rngs)
        self.bn1 = BatchNorm2d(planes)
        self.conv2 = Conv2d(planes, planes, 3, 1, previous_dilation, previous_dilation, bias=False, rngs=rngs)
        self.bn2 = BatchNorm2d(planes)
        self.downsample = downsample

    def __call__(self, x, hw=None):
        hw_out = down2(hw) if self.conv1.stride > 1 else hw
        out = conv_bn(self.conv1, self.bn1, x, hw, act=True)
        residual = x if self.downsample is None else self.downsample(x, hw)
        return conv_bn(self.conv2, self.bn2, out, hw_out, act=True, residual=residual)


class BottleneckV1b(nnx.Module):
    """1x1 -> BN -> ReLU -> 3x3 (stride, dilation) -> BN -> ReLU -> 1x1 (4x) -> BN, + residual -> ReLU."""

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, dilation=1, downsample=None, previous_dilation=1, *, rngs):
        self.conv1 = Conv2d(inplanes, planes, 1, bias=False, rngs=rngs)
        self.bn1 = BatchNorm2d(planes)
        self.conv2 = Conv2d(planes, planes, 3, stride, dilation, dilation, bias=False, rngs=rngs)
        self.bn2 = BatchNorm2d(planes)
        self.conv3 = Conv2d(planes, planes * 4, 1, bias=False, rngs=rngs)
        self.bn3 = BatchNorm2d(planes * 4)
        self.downsample = downsample

    def __call__(self, x, hw=None):
        hw_out = down2(hw) if self.conv2.stride > 1 else hw
        out = conv_bn(self.conv1, self.bn1, x, hw, act=True)
        out = conv_bn(self.conv2, self.bn2, out, hw, act=True)
        residual = x if self.downsample is None else self.downsample(x, hw)
        return conv_bn(self.conv3, self.bn3, out, hw_out, act=True, residual=residual)


def make_layer(block, inplanes, planes, blocks, stride=1, dilation=1, *, rngs):
    """A ResNet stage as an `nnx.List` of blocks; the first gets a 1x1 conv + BN downsample if needed.

    Dilation as ResNetV1b._make_layer: first block dilation 1 (d in 1, 2) or 2 (d == 4), others d.
    """
    downsample = None
    if stride != 1 or inplanes != planes * block.expansion:
        downsample = ConvBN(inplanes, planes * block.expansion, 1, stride, 0, rngs=rngs)
    first_dilation = 1 if dilation in (1, 2) else 2
    layers = [block(inplanes, planes, stride, first_dilation, downsample, dilation, rngs=rngs)]
    for _ in range(1, blocks):
        layers.append(block(planes * block.expansion, planes, 1, dilation, None, dilation, rngs=rngs))
    return nnx.List(layers)


def run_layer(layer, x, hw=None):
    """Apply an `nnx.List` of blocks; returns (x, hw after the stage)."""
    for block in layer:
        stride = block.conv2.stride if isinstance(block, BottleneckV1b) else block.conv1.stride
        x = block(x, hw)
        if stride > 1:
            hw = down2(hw)
    return x, hw


def max_pool_3x3_s2(x, hw=None):
    """MaxPool2d(3, stride 2, padding 1) with -inf padding; on a canvas the invalid region is -inf too."""
    if hw is not None:
        from fcfi_jax.models.layers import valid_mask
        x = jnp.where(valid_mask(x.shape[1:3], hw, jnp.bool_), x, -jnp.inf)
    y = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                              ((0, 0), (1, 1), (1, 1), (0, 0)))
    return apply_mask(y, down2(hw))


RESNET_DEPTHS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3), "resnet152": (3, 8, 36, 3)}


class ResNetBackbone(nnx.Module):
    """Dilated ResNet V1s (deep stem, width 64), output stride 8. Keys: conv1.{0,1,3,4,6}, bn1, layer1..4.

    The 64 click-feature channels are added to the first 64 stem channels before the max pool.
    """

    def __init__(self, backbone: str = "resnet101", *, rngs):
        if backbone not in RESNET_DEPTHS:
            raise ValueError(f"unsupported DeepLab backbone {backbone!r}; supported: {sorted(RESNET_DEPTHS)}")
        depth = RESNET_DEPTHS[backbone]
        self.kernels = REFERENCE
        self.conv1 = nnx.List([
            Conv2d(3, 64, 3, 2, 1, bias=False, rngs=rngs), BatchNorm2d(64), None,
            Conv2d(64, 64, 3, 1, 1, bias=False, rngs=rngs), BatchNorm2d(64), None,
            Conv2d(64, 128, 3, 1, 1, bias=False, rngs=rngs),
        ])
        self.bn1 = BatchNorm2d(128)
        self.layer1 = make_layer(BottleneckV1b, 128, 64, depth[0], rngs=rngs)
        self.layer2 = make_layer(BottleneckV1b, 256, 128, depth[1], stride=2, rngs=rngs)
        self.layer3 = make_layer(BottleneckV1b, 512, 256, depth[2], dilation=2, rngs=rngs)
        self.layer4 = make_layer(BottleneckV1b, 1024, 512, depth[3], dilation=4, rngs=rngs)

    def __call__(self, x, coord_features, hw=None):
        conv_a, bn_a, _, conv_b, bn_b, _, conv_c = self.conv1   # the deep stem: official conv1.{0, 1, 3, 4, 6}
        hw2 = down2(hw)
        x = conv_bn(conv_a, bn_a, x, hw, act=True)
        x = conv_bn(conv_b, bn_b, x, hw2, act=True)
        x = conv_bn(conv_c, self.bn1, x, hw2, act=True)
        pad = x.shape[-1] - coord_features.shape[-1]
        x = x + jnp.pad(coord_features, ((0, 0), (0, 0), (0, 0), (0, pad)))
        x = (self.kernels.max_pool or max_pool_3x3_s2)(x, hw2)
        hw4 = down2(hw2)
        c1, _ = run_layer(self.layer1, x, hw4)
        c2, hw8 = run_layer(self.layer2, c1, hw4)
        c3, _ = run_layer(self.layer3, c2, hw8)
        c4, _ = run_layer(self.layer4, c3, hw8)
        return c1, c4, (hw4, hw8)
