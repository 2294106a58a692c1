"""Load an FCFI model from an official `.pth` or a converted directory; write converted directories.

A converted directory holds `model_config.json` (the architecture, `ModelConfig`) and `state/`,
an orbax checkpoint of the parameters and BatchNorm statistics (NNX state as a pure dict).
`load_model(path)` accepts either form and returns the model in eval mode.
"""
from __future__ import annotations

import json
import os
import pathlib

import jax
import numpy as np
from flax import nnx

from fcfi_jax.convert.config_schema import ConfigError, validate_model_config, validate_official_config
from fcfi_jax.convert.mapping import load_official_state_dict
from fcfi_jax.convert.torch_pickle import CheckpointError, read_official_checkpoint
from fcfi_jax.models.is_model import ISModel, ModelConfig, build_model, config_from_official

CONFIG_FILE = "model_config.json"
STATE_DIR = "state"


def convert_official(path, progress=None) -> tuple[ISModel, dict]:
    """Read an official checkpoint (no torch needed, no pickled code run) into a new model, strictly.

    progress(done, total): called while reading, per tensor record (see `torch_pickle.load_torch_file`)."""
    state_dict, official_config = read_official_checkpoint(path, progress)
    return model_from_official(state_dict, official_config, path)


def model_from_official(state_dict: dict, official_config: dict | None, path, seed: int = 0) -> tuple[ISModel, dict]:
    """`convert_official` of a checkpoint's parts (`torch_pickle.official_parts`); path: for messages."""
    if official_config is None:
        raise CheckpointError(f"{path} holds a bare state_dict without the official 'config' entry; "
                              "the architecture cannot be known. Save it with the official save_checkpoint.")
    try:
        validate_official_config(official_config)   # types, ranges, depth: before anything reads the values
        cfg = config_from_official(official_config)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: {e}") from None
    model = build_model(cfg, seed=seed)
    report = load_official_state_dict(model, state_dict)
    report.update(source=str(path), model_class=official_config["class"])
    return model, report


def save_converted(model: ISModel, out_dir, extra: dict | None = None) -> pathlib.Path:
    """Write `model` as a converted directory (orbax state + model_config.json).

    Multi-process runs: every process must call this (orbax synchronises them); process 0 writes."""
    import orbax.checkpoint as ocp

    out = pathlib.Path(out_dir).absolute()
    out.mkdir(parents=True, exist_ok=True)
    state = nnx.to_pure_dict(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat)))
    state = jax.tree.map(np.asarray, state)
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(out / STATE_DIR, state, force=True)
    ckptr.wait_until_finished()
    meta = {"format": "fcfi_jax/1", "model_config": model.cfg.to_dict()}
    meta.update(extra or {})
    if jax.process_index() == 0:
        (out / CONFIG_FILE).write_text(json.dumps(meta, indent=1))
    return out


def load_converted(directory) -> ISModel:
    import orbax.checkpoint as ocp

    directory = pathlib.Path(directory).absolute()
    cfg_path = directory / CONFIG_FILE
    if not cfg_path.is_file() or not (directory / STATE_DIR).is_dir():
        raise CheckpointError(f"{directory} is not a converted fcfi_jax checkpoint (expected {CONFIG_FILE} and "
                              f"{STATE_DIR}/ inside; create one with: python tools/convert.py --checkpoint X.pth "
                              f"--output {directory})")
    redo = f"re-create it with: python tools/convert.py --checkpoint X.pth --output {directory}"
    if cfg_path.stat().st_size > 1 << 20:   # ~700 bytes when written by save_converted
        raise CheckpointError(f"{cfg_path} is {cfg_path.stat().st_size} bytes, not a model config; {redo}")
    try:
        meta = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as e:   # truncated, not UTF-8, or absurdly nested
        raise CheckpointError(f"{cfg_path} is not valid JSON ({str(e)[:120]}); {redo}") from None
    try:
        if not isinstance(meta, dict) or "model_config" not in meta:
            raise ConfigError(f"expected an object with 'model_config', found {type(meta).__name__}")
        cfg = ModelConfig.from_dict(validate_model_config(meta["model_config"]))
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{cfg_path}: {e}; {redo}") from None
    model = build_model(cfg)
    target = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))))
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    try:
        restored = ocp.StandardCheckpointer().restore(directory / STATE_DIR, abstract)
    except Exception as e:   # orbax/tensorstore errors are long multi-line chains: keep the first line
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(f"{directory / STATE_DIR} could not be restored ({type(e).__name__}: {first}); "
                              f"{redo}") from None
    nnx.replace_by_pure_dict(state := nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat)), restored)
    nnx.update(model, state)
    model.eval()
    return model


def load_model(path) -> ISModel:
    """The one call to get a model: an official `.pth` file or a converted directory."""
    p = pathlib.Path(os.fspath(path))
    if p.is_dir():
        return load_converted(p)
    model, _ = convert_official(p)
    model.eval()
    return model
