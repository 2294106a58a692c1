"""The two official model wrappers (HRNetModel, DeeplabModel): input handling, click encoding,
output resizing (isegm/model/is_*_model.py) and `build_model` from an official checkpoint config.

Call signature of both (NHWC):
    out = model(image, points, new_points, gate)
    image      (B, H, W, 4) float32: RGB in [0, 1] and the previous-mask channel
    points     (B, 2N, 3) rows (y, x, order); N positive rows then N negative, (-1, -1, -1) padding
    new_points (B, K, 3) (y, x, label) of the newest click(s), slot 0 = newest
    gate       scalar: 0.0 on the first click, 1.0 after
    out: dict with `instances` (logits), `updated_feedback1`, `updated_feedback2`, `gauss_dist_maps`,
         `instances_aux` (HRNet+OCR), `valid_masks` (soft_box=True), all (B, H, W, C).
Train or eval mode is NNX's (`model.train()`, `model.eval()`: BatchNorm statistics, dropout).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fcfi_jax.models.deeplab import DeepLabV3Plus
from fcfi_jax.models.fcfi_modules import ffcm_half_size
from fcfi_jax.models.hrnet import HighResolutionNet
from fcfi_jax.models.layers import (
    Canvas,
    Conv2d,
    Holder,
    accum_dtype,
    apply_mask,
    down2,
    leaky_relu,
    relu,
    resize_ac,
    resize_hp,
    resize_nearest,
)
from fcfi_jax.ops import REFERENCE

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def dist_maps(points, hw_shape, radius: float, use_disks: bool = True, hw=None):
    """Official DistMaps (GPU path): per polarity, min squared distance to its valid clicks.

    points (B, 2N, 3); a row is invalid iff max(y, x) < 0. Disks: 1.0 where d^2 <= R^2.
    Returns (B, H, W, 2) float32 [positive, negative].
    """
    b, n2, _ = points.shape
    n = n2 // 2
    h, w = hw_shape
    p = points[..., :2].astype(jnp.float32).reshape(b, 2, n, 2)
    invalid = jnp.max(p, axis=-1) < 0  # (B, 2, N)
    rows = jnp.arange(h, dtype=jnp.float32)
    cols = jnp.arange(w, dtype=jnp.float32)
    if use_disks:
        dy = rows[None, None, None, :] - p[..., 0, None]  # (B, 2, N, H)
        dx = cols[None, None, None, :] - p[..., 1, None]  # (B, 2, N, W)
    else:
        dy = (rows[None, None, None, :] - p[..., 0, None]) / radius
        dx = (cols[None, None, None, :] - p[..., 1, None]) / radius
    if use_disks and n <= 64:
        # min_n d2 <= R^2  <=>  some valid n has d2 <= R^2: unrolled over the points as one elementwise fusion
        # written in NHWC (same per-point arithmetic; no (B, 2, N, H, W) reduction and no transpose).
        dy2, dx2 = dy ** 2, dx ** 2
        maps = []
        for k in range(2):
            m = None
            for j in range(n):
                inside = ((dy2[:, k, j, :, None] + dx2[:, k, j, None, :] <= radius * radius)
                          & ~invalid[:, k, j, None, None])
                m = inside if m is None else m | inside
            maps.append(m)
        return apply_mask(jnp.stack(maps, axis=-1).astype(jnp.float32), hw)
    d2 = dy[..., :, None] ** 2 + dx[..., None, :] ** 2  # (B, 2, N, H, W)
    d2 = jnp.where(invalid[..., None, None], 1e6, d2)
    d2 = jnp.min(d2, axis=2)  # (B, 2, H, W)
    if use_disks:
        maps = (d2 <= radius * radius).astype(jnp.float32)
    else:
        maps = jnp.tanh(2.0 * jnp.sqrt(d2))
    return apply_mask(jnp.transpose(maps, (0, 2, 3, 1)), hw)


class ScaleLayer(nnx.Module):
    """y = x * |scale| (lr_mult 1). Parameter `scale` (1,), init 0.05."""

    def __init__(self, init_value: float = 0.05):
        self.scale = nnx.Param(jnp.full((1,), init_value, jnp.float32))

    def __call__(self, x):
        return x * jnp.abs(self.scale[...]).astype(x.dtype)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of one checkpoint: the official constructor arguments that change the graph."""

    family: str  # 'hrnet' | 'deeplab'
    # HRNet
    width: int = 48
    ocr_width: int = 256
    small: bool = False
    with_aux_output: bool = False
    # DeepLab
    backbone: str = "resnet50"
    deeplab_ch: int = 256
    aspp_dropout: float = 0.5
    # both
    mid_ch: int = 32
    update_num: int = 1
    expansion_ratio: float = 2.0
    use_leaky_relu: bool = False
    use_disks: bool = False
    norm_radius: float = 260
    with_prev_mask: bool = False
    binary_prev_mask: bool = False
    num_classes: int = 1
    norm_mean_std: tuple = (MEAN, STD)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; known: {sorted(known)}")
        d = dict(d)
        if "norm_mean_std" in d:
            d["norm_mean_std"] = tuple(tuple(float(v) for v in t) for t in d["norm_mean_std"])
        return cls(**d)


# The released architectures (models/iter_mask/*.py; docs/official_quirks.md #1): ModelConfig fields of "HRNet18s"
# and "ResNet-101".
RELEASED_ARCHS = {
    "hrnet18s": dict(family="hrnet", width=18, ocr_width=48, mid_ch=64, with_aux_output=True, use_leaky_relu=True,
                     expansion_ratio=0.3, use_disks=True, norm_radius=5, with_prev_mask=True),
    "r101": dict(family="deeplab", backbone="resnet101", deeplab_ch=256, mid_ch=32, aspp_dropout=0.2,
                 expansion_ratio=0.3, use_leaky_relu=True, use_disks=True, norm_radius=5, with_prev_mask=True),
}

OFFICIAL_CLASSES = {
    "isegm.model.is_hrnet_model.HRNetModel": "hrnet",
    "isegm.model.is_deeplab_model.DeeplabModel": "deeplab",
}
# Official constructor arguments this port does not implement, with the value it requires.
_UNSUPPORTED = {"use_rgb_conv": False, "conv_extend": False, "clicks_groups": None, "cpu_dist_maps": None}


def config_from_official(official: dict) -> ModelConfig:
    """ModelConfig from an official checkpoint's `config` ({'class': ..., 'params': {name: {'value': ...}}})."""
    if not isinstance(official, dict) or "class" not in official or "params" not in official:
        raise ValueError("checkpoint config must be a dict with 'class' and 'params' (official save_checkpoint format)")
    cls = official["class"]
    if cls not in OFFICIAL_CLASSES:
        raise ValueError(f"unknown model class {cls!r} in checkpoint config; supported: {sorted(OFFICIAL_CLASSES)}")
    params = {k: (v["value"] if isinstance(v, dict) and "value" in v else v) for k, v in official["params"].items()}
    for key, required in _UNSUPPORTED.items():
        if key in params and required is not None and params[key] != required:
            raise ValueError(f"checkpoint uses {key}={params[key]!r}, which fcfi_jax does not implement "
                             f"(only {key}={required!r}, as in the released models)")
    if params.get("clicks_groups") is not None:
        raise ValueError("checkpoint uses clicks_groups, which fcfi_jax does not implement")
    norm_layer = params.get("norm_layer", "torch.nn.modules.batchnorm.BatchNorm2d")
    if norm_layer not in ("torch.nn.modules.batchnorm.BatchNorm2d", None):
        raise ValueError(f"checkpoint uses norm_layer={norm_layer!r}; only BatchNorm2d is implemented")
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    kwargs = {k: v for k, v in params.items() if k in known}
    if "norm_mean_std" in kwargs:
        kwargs["norm_mean_std"] = tuple(tuple(float(x) for x in t) for t in kwargs["norm_mean_std"])
    cfg = ModelConfig(family=OFFICIAL_CLASSES[cls], **kwargs)
    if not cfg.with_prev_mask:
        raise ValueError("checkpoint has with_prev_mask=False; FCFI's feedback modules need the previous mask")
    return cfg


class ISModel(nnx.Module):
    """Both official families behind one forward (`family` picks HRNet+OCR or DeepLabV3+)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.kernels = REFERENCE
        coord_ch = 3 if cfg.family == "hrnet" else 2  # the DeepLab base never adds the prev mask (docs/official_quirks.md #3)
        self.maps_transform = nnx.List([
            Conv2d(coord_ch, 16, 1, rngs=rngs), None, Conv2d(16, 64, 3, 2, 1, rngs=rngs), ScaleLayer(0.05)])
        if cfg.family == "hrnet":
            self.feature_extractor = HighResolutionNet(
                cfg.width, cfg.num_classes, aux_ch=3 + 1 + coord_ch, ocr_width=cfg.ocr_width, mid_ch=cfg.mid_ch,
                small=cfg.small, update_num=cfg.update_num, expansion_ratio=cfg.expansion_ratio, rngs=rngs)
        elif cfg.family == "deeplab":
            self.feature_extractor = DeepLabV3Plus(
                cfg.backbone, cfg.deeplab_ch, cfg.mid_ch, cfg.update_num, cfg.expansion_ratio,
                cfg.aspp_dropout, rngs=rngs)
            ch = cfg.deeplab_ch
            from fcfi_jax.models.deeplab import SeparableConv2d
            self.head = Holder(layers=nnx.List([SeparableConv2d(ch, ch // 2, rngs=rngs),
                                                SeparableConv2d(ch // 2, ch // 2, rngs=rngs),
                                                Conv2d(ch // 2, 1, 1, rngs=rngs)]))
        else:
            raise ValueError(f"unknown model family {cfg.family!r}")

    def geometry(self, true_hw: tuple[int, int]) -> jax.Array:
        """int32 (4,) = [H, W, half_h, half_w] for canvas execution of an H x W input (host-side, exact)."""
        half = ffcm_half_size(self.feature_extractor.correction_module.expan_ratio, *true_hw)
        return jnp.asarray([true_hw[0], true_hw[1], half[0], half[1]], jnp.int32)

    def __call__(self, image, points, new_points, gate, *, soft_box: bool = False,
                 designated_click_radius: float = -1, canvas=None, canvas_masks=()):
        """See the module docstring. `soft_box`: FFCM's training form (the official `is_training=True`): a
        soft box mask over the whole map instead of the hard box, float `new_points`, and `valid_masks` in
        the outputs; the official trainer uses it in train mode and in its eval-mode click simulation.
        `canvas`: None for exact shapes, or the int32 (4,) array from `geometry(true_hw)` when `image` is a
        zero-padded canvas whose top-left H x W is the input. `canvas_masks`: optionally
        `layers.canvas_level_masks(canvas_hw, true_hw)`, passed in as arrays (the same result, a faster
        compilation: see `layers.Canvas`)."""
        cfg = self.cfg
        hw = None if canvas is None else Canvas(canvas[:2], canvas_masks)
        size = image.shape[1:3]
        geom = None
        if canvas is not None:
            geom = dict(fb_hw=hw, ft_hw=down2(down2(hw)), half=canvas[2:4])
        rgb = image[..., :3]
        prev = image[..., 3:4]
        if cfg.binary_prev_mask:
            prev = (prev > 0.5).astype(prev.dtype)
        # The compute dtype is the image's (float32, or bfloat16 for speed on GPU/TPU): constants and maps
        # made here are cast to it so that nothing silently promotes the network back to float32.
        dt = image.dtype
        # The official normalizer holds mean and std as float32 tensors, also in float64 (docs/official_quirks.md #12).
        mean = jnp.asarray(np.float32(cfg.norm_mean_std[0]), accum_dtype(dt))
        std = jnp.asarray(np.float32(cfg.norm_mean_std[1]), accum_dtype(dt))
        rgb = apply_mask(((rgb.astype(accum_dtype(dt)) - mean) / std).astype(dt), hw)
        gate = jnp.asarray(gate).astype(dt)

        radius = cfg.norm_radius if designated_click_radius < 0 else designated_click_radius
        disks = dist_maps(points, size, radius, cfg.use_disks, hw).astype(dt)
        enc = jnp.concatenate([prev, disks], axis=-1) if cfg.family == "hrnet" else disks
        conv1, _, conv2, scale = self.maps_transform   # official maps_transform.{0, 1 (activation), 2, 3}
        act = leaky_relu if cfg.use_leaky_relu else relu
        coord = act(conv1(enc, hw))
        coord = scale(conv2(coord, hw))

        fe = self.feature_extractor(rgb, enc, new_points, prev, gate, coord, soft_box=soft_box, hw=hw, geom=geom)
        hw4 = None if hw is None else down2(down2(hw))
        up = lambda t: resize_ac(t, size, hw4, hw, self.kernels.lerp)
        out = {}
        if cfg.family == "hrnet":
            out["instances"] = up(fe["instances"])
            if fe["instances_aux"] is not None and cfg.with_aux_output:
                out["instances_aux"] = up(fe["instances_aux"])
            out["updated_feedback1"] = up(fe["updated_feedback1"])
        else:
            sep1, sep2, conv = self.head.layers
            x = sep1(fe["features"], hw4)
            x = sep2(x, hw4)
            out["instances"] = up(conv(x, hw4))
            out["updated_feedback1"] = resize_hp(fe["updated_feedback1"], size, hw4, hw, self.kernels.lerp)  # quirk #4
        out["updated_feedback2"] = up(fe["updated_feedback2"])
        if soft_box:
            out["valid_masks"] = resize_nearest(fe["valid_masks"], size)
        out["gauss_dist_maps"] = enc
        return out


def cast_model(model: ISModel, dtype) -> ISModel:
    """Cast every floating parameter and BatchNorm statistic of `model` to `dtype`, in place (once, at load
    time: layers compute in the dtype of their input and cast nothing back). float64 needs `jax_enable_x64`."""
    dtype = jnp.dtype(dtype)
    if dtype == jnp.float64 and not jax.config.jax_enable_x64:
        raise ValueError("float64 needs 64-bit JAX: call jax.config.update('jax_enable_x64', True) first "
                         "(or set JAX_ENABLE_X64=1)")
    state = nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))
    nnx.update(model, jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, state))
    return model


def build_model(cfg: ModelConfig | dict, seed: int = 0) -> ISModel:
    """A fresh model (official Xavier-gluon init) in eval mode."""
    if isinstance(cfg, dict):
        cfg = ModelConfig.from_dict(cfg)
    model = ISModel(cfg, rngs=nnx.Rngs(seed))
    model.eval()
    return model
