"""Initial weights for training: a whole FCFI model to fine-tune, or an ImageNet backbone.

`load_init(build, path, fmt)` (what `config.init_from` / `config.init_format` select):
- 'fcfi': a whole FCFI model: a converted directory (`fcfi_jax.convert`, or a previous run's `<workdir>/model`)
  or an official `.pth` holding {'state_dict', 'config'} (the released checkpoints). The architecture comes
  from the checkpoint; every tensor is loaded strictly by the converter. This is how fine-tuning starts from the
  released weights.
- 'auto' (default): a directory is 'fcfi'; a file with an official 'config' entry is 'fcfi'; otherwise the
  file's keys choose between the two ImageNet formats below. The file is read once.

ImageNet backbone initialisation from a user-provided PyTorch file (docs/official_quirks.md #44), as the official recipe does.

- 'hrnet_imagenet': HRNet-Image-Classification weights (e.g. hrnetv2_w18_imagenet_pretrained.pth). Keys lose a
  'model.' prefix, 'last_layer' becomes 'aux_head', and every key that names a variable of the feature
  extractor's backbone part (stem conv1/bn1/conv2/bn2, layer1, transitions, stages, BN statistics included) is
  loaded. The classification head of the file (incre_modules, downsamp_modules, final_layer, classifier) has no
  counterpart and is reported as unused.
- 'resnet_imagenet': a ResNet v1s state_dict (gluon_resnet101_v1s from timm: deep stem conv1.0/1/3/4/6, bn1,
  layer1..layer4); `fc.*` is unused. Loaded into feature_extractor.backbone.

Strict where it matters: every backbone variable must be found with the right shape, otherwise one
ConversionError lists what is missing; the FCFI modules, heads, ASPP, maps_transform keep their Xavier init.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from fcfi_jax.convert.mapping import ConversionError, model_variables, to_flax_layout
from fcfi_jax.convert.torch_pickle import load_torch_file

HRNET_BACKBONE = ("conv1.", "bn1.", "conv2.", "bn2.", "layer1.", "transition", "stage")
DROPPABLE = "num_batches_tracked"


def _flat_state_dict(obj, path) -> dict:
    for key in ("state_dict", "model", "model_state"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not (isinstance(obj, dict) and obj and all(isinstance(v, np.ndarray) for v in obj.values())):
        raise ConversionError(f"{path}: expected a state_dict of tensors (or {{'state_dict': ...}}), "
                              f"found {type(obj).__name__}")
    return dict(obj)


def _guess_format(keys) -> str:
    if any(k.replace("model.", "", 1).startswith("stage2.") for k in keys):
        return "hrnet_imagenet"
    if any(k.startswith("layer4.") for k in keys):
        return "resnet_imagenet"
    raise ConversionError("cannot tell the pretrained file's format from its keys (no 'stage2.*' of HRNet, no "
                          "'layer4.*' of ResNet); set config.init_format")


INIT_FORMATS = ("auto", "fcfi", "hrnet_imagenet", "resnet_imagenet")


def load_init(build, path, fmt: str = "auto", seed: int = 0):
    """(model, report) for `config.init_from`: `build()` makes the config's model, used for ImageNet files;
    a whole FCFI checkpoint brings its own architecture (see module doc)."""
    from pathlib import Path

    from fcfi_jax.convert.torch_pickle import CheckpointError
    if fmt not in INIT_FORMATS:
        raise ConversionError(f"unknown init_format {fmt!r}: use one of {', '.join(INIT_FORMATS)}")
    p = Path(path)
    if p.is_dir():
        if fmt not in ("auto", "fcfi"):
            raise ConversionError(f"{path} is a directory (a converted FCFI model) but init_format={fmt!r}: use "
                                  f"'fcfi' or 'auto'")
        from fcfi_jax.convert.checkpoint import load_converted
        model = load_converted(p)
        return model, {"format": "fcfi", "loaded": len(list(model_variables(model)))}
    if not p.is_file():
        raise FileNotFoundError(f"init_from: no file or directory {path}")
    obj = load_torch_file(path)
    official = isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict) and obj.get("config") is not None
    if fmt == "fcfi" or (fmt == "auto" and official):
        if not official:
            raise CheckpointError(f"{path} is not a whole FCFI checkpoint ({{'state_dict', 'config'}} as the official "
                                  f"save_checkpoint writes): for ImageNet backbone weights use init_format='auto'")
        from fcfi_jax.convert.checkpoint import model_from_official
        from fcfi_jax.convert.torch_pickle import official_parts
        model, report = model_from_official(*official_parts(obj, path), path, seed=seed)
        return model, {"format": "fcfi", "loaded": report["variables"]}
    model = build()
    return model, load_pretrained(model, path, fmt, state=obj)


def load_pretrained(model, path, fmt: str = "auto", state=None) -> dict:
    """Overwrite the backbone of `model` (in place) with ImageNet weights; returns a report of counts.
    `state`: the file's content when already read."""
    state = _flat_state_dict(load_torch_file(path) if state is None else state, path)
    fmt = _guess_format(state) if fmt == "auto" else fmt
    family = model.cfg.family
    if fmt == "hrnet_imagenet":
        if family != "hrnet":
            raise ConversionError(f"{path} holds HRNet ImageNet weights but the model is {family}")
        renamed = {}
        for k, v in state.items():
            k = k[len("model."):] if k.startswith("model.") else k
            renamed["feature_extractor." + k.replace("last_layer", "aux_head")] = v
        wanted = lambda key: key.startswith(tuple("feature_extractor." + p for p in HRNET_BACKBONE))
    elif fmt == "resnet_imagenet":
        if family != "deeplab":
            raise ConversionError(f"{path} holds ResNet ImageNet weights but the model is {family}")
        renamed = {"feature_extractor.backbone." + k: v for k, v in state.items()}
        wanted = lambda key: key.startswith("feature_extractor.backbone.")
    else:
        raise ConversionError(f"unknown init_format {fmt!r}: use 'hrnet_imagenet', 'resnet_imagenet' or 'auto'")

    targets = [(k, var) for k, var in model_variables(model) if wanted(k)]
    missing, mismatched, assign = [], [], []
    for key, var in targets:
        if key not in renamed:
            missing.append(key)
            continue
        value = to_flax_layout(np.asarray(renamed[key]))
        if value.shape != tuple(var.get_value().shape):
            mismatched.append(f"{key}: file {tuple(np.asarray(renamed[key]).shape)}, model expects "
                              f"{tuple(var.get_value().shape)} (Flax layout)")
            continue
        assign.append((var, value))
    if missing or mismatched:
        raise ConversionError(
            f"{path} ({fmt}) does not fit this backbone (width / depth / small?): {len(missing)} missing, "
            f"{len(mismatched)} shape mismatches:\n  " + "\n  ".join((missing + mismatched)[:40]))
    for var, value in assign:
        var.set_value(jnp.asarray(value, dtype=var.get_value().dtype))
    used = {k for k, _ in targets}
    unused = sorted(k for k in renamed if k not in used and not k.endswith(DROPPABLE))
    return {"format": fmt, "loaded": len(assign), "unused_file_keys": len(unused),
            "unused_examples": [k.split(".", 1)[1] for k in unused[:5]]}
