"""Validate a checkpoint's architecture before anything is built from it: type, range, depth, finite numbers.

Two entry points, both raising `ConfigError` (a ValueError) with one line that names the key, the value found
and what is expected:

- `validate_official_config(config)`: the `config` entry of an official checkpoint, as written by the official
  `isegm/utils/serialization.py` (`{'class': 'isegm.model....', 'params': {name: {'type', 'value',
  'specified'}}}`), before `config_from_official` reads it;
- `validate_model_config(d)`: the `model_config` dict of a converted directory (`model_config.json`), before
  `ModelConfig.from_dict`.

Why: the values come from a file. A `width` of "18", -4 or 18.5, a `with_prev_mask` of "no" (truthy), an
`expansion_ratio` of NaN or a `norm_mean_std` that is an int would otherwise fail deep inside the model (or not at
all); a 200,000-level nested or a 60-level shared list (2**60 elements reachable from a 41 MB file) would exhaust
the stack or the memory of whatever walks it. Known keys must have exactly the expected form; the values of keys
this port ignores are walked once, iteratively, with a bound on depth and on nodes visited, shared or not.

The ranges bound what a config can make `build_model` allocate: they cover every released and every documented
official variant (HRNet widths 18..64, OCR width <= 512, DeepLab channels <= 1024) with room to spare.
"""
from __future__ import annotations

import math

from fcfi_jax.convert.torch_pickle import _brief

__all__ = ["ConfigError", "validate_official_config", "validate_model_config"]

MAX_DEPTH = 16          # official params are at most 3 levels deep (norm_mean_std: a list of lists)
MAX_NODES = 10_000      # official configs have ~100 values in all
MAX_STR = 1_000


class ConfigError(ValueError):
    """A checkpoint config value of the wrong type, out of range, not finite, or nested too deeply."""


def _int(lo, hi):
    def check(v):
        if isinstance(v, bool) or not isinstance(v, int):
            return f"an integer in [{lo}, {hi}]"
        return None if lo <= v <= hi else f"an integer in [{lo}, {hi}]"
    return check


def _num(lo, hi, lo_open=False):
    def check(v):
        want = f"a finite number in {'(' if lo_open else '['}{lo}, {hi}]"
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return want
        try:
            f = float(v)
        except OverflowError:
            return want
        if not math.isfinite(f) or f > hi or f < lo or (lo_open and f == lo):
            return want
        return None
    return check


def _bool(v):
    return None if isinstance(v, bool) else "true or false (a bool)"


def _one_of(*choices):
    def check(v):
        return None if isinstance(v, str) and v in choices else f"one of {list(choices)}"
    return check


def _none_or(check):
    def inner(v):
        return None if v is None else (None if check(v) is None else f"null or {check(v)}")
    return inner


def _str(v):
    return None if isinstance(v, str) and len(v) <= MAX_STR else f"a string of at most {MAX_STR} characters"


def _mean_std(v):
    want = "two lists of 3 finite numbers [[mean R, G, B], [std R, G, B]] with std > 0"
    if not (isinstance(v, (list, tuple)) and len(v) == 2
            and all(isinstance(t, (list, tuple)) and len(t) == 3 for t in v)):
        return want
    if any(_num(-1e3, 1e3)(x) for x in v[0]) or any(_num(0, 1e3, lo_open=True)(x) for x in v[1]):
        return want
    return None


# ModelConfig field -> check (names are the official constructor arguments; see is_model.ModelConfig).
FIELDS = {
    "width": _int(1, 64),
    "ocr_width": _int(0, 512),
    "small": _bool,
    "with_aux_output": _bool,
    "backbone": _one_of("resnet34", "resnet50", "resnet101", "resnet152"),
    "deeplab_ch": _int(2, 1024),
    "aspp_dropout": _num(0, 1),
    "mid_ch": _int(1, 1024),
    "update_num": _int(1, 8),
    "expansion_ratio": _num(0, 100, lo_open=True),
    "use_leaky_relu": _bool,
    "use_disks": _bool,
    "norm_radius": _num(0, 100_000, lo_open=True),
    "with_prev_mask": _bool,
    "binary_prev_mask": _bool,
    "num_classes": _int(1, 64),
    "norm_mean_std": _mean_std,
}
# Official constructor arguments this port reads but does not map to a field (is_model.config_from_official).
OFFICIAL_EXTRA = {
    "use_rgb_conv": _bool,
    "conv_extend": _bool,
    "cpu_dist_maps": _none_or(_bool),
    "clicks_groups": _none_or(lambda v: None if isinstance(v, (list, tuple)) else "a list"),
    "norm_layer": _none_or(_str),
    "backbone_norm_layer": _none_or(_str),
    "backbone_lr_mult": _num(0, 1e3),
    # a ModelConfig field set by this port from 'class', never an official argument
    "family": lambda v: "no 'family' entry (the model family comes from 'class')",
}


def _walk(value, where: str):
    """Bounded, iterative walk of a value this port ignores: only JSON-like data, not too deep, not too many
    nodes (each visit of a shared object counts, so a 60-level shared list stops after MAX_NODES)."""
    stack, nodes = [(value, 0)], 0
    while stack:
        v, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise ConfigError(f"{where} holds more than {MAX_NODES} values; official configs hold about 100")
        if depth > MAX_DEPTH:
            raise ConfigError(f"{where} is nested more than {MAX_DEPTH} levels deep; official values are at most 3")
        if v is None or isinstance(v, (bool, int, float)):
            continue
        if isinstance(v, str):
            if len(v) > MAX_STR:
                raise ConfigError(f"{where} holds a string of {len(v)} characters (at most {MAX_STR})")
        elif isinstance(v, (list, tuple)):
            stack.extend((x, depth + 1) for x in v[:MAX_NODES + 1])
        elif isinstance(v, dict):
            for k, x in list(v.items())[:MAX_NODES + 1]:
                stack.extend([(k, depth + 1), (x, depth + 1)])
        else:
            raise ConfigError(f"{where} holds {_brief(v)}; only numbers, strings, lists and dicts are expected")


def _check(name: str, value, check, where: str):
    problem = check(value)
    if problem:
        raise ConfigError(f"{where}: {name} is {_brief(value)}, expected {problem}")


def validate_official_config(config) -> dict:
    """Check an official checkpoint config; returns {name: value} of its params (the 'value' of each entry)."""
    from fcfi_jax.models.is_model import OFFICIAL_CLASSES

    where = "checkpoint config"
    if not isinstance(config, dict) or "class" not in config or "params" not in config:
        raise ConfigError(f"{where} must be a dict with 'class' and 'params' (official save_checkpoint format), "
                          f"found {_brief(config)}")
    cls = config["class"]
    if not isinstance(cls, str) or cls not in OFFICIAL_CLASSES:
        raise ConfigError(f"{where}: unknown model class {_brief(cls)}; supported: {sorted(OFFICIAL_CLASSES)}")
    params = config["params"]
    if not isinstance(params, dict):
        raise ConfigError(f"{where}: 'params' is {_brief(params)}, expected a dict of constructor arguments")
    if len(params) > 256:
        raise ConfigError(f"{where}: 'params' has {len(params)} entries; official configs have about 20")
    values = {}
    for name, entry in params.items():
        if not isinstance(name, str) or len(name) > 100:
            raise ConfigError(f"{where}: a parameter name is {_brief(name)}, expected a short string")
        # isegm/utils/serialization.py stores {'type', 'value', 'specified'}; a bare value is accepted too.
        value = entry["value"] if isinstance(entry, dict) and "value" in entry else entry
        check = FIELDS.get(name) or OFFICIAL_EXTRA.get(name)
        if check is not None:
            _check(name, value, check, where)
        else:
            _walk(value, f"{where}: {name}")
        values[name] = value
    for key, value in config.items():   # anything next to 'class' and 'params' (not read, but bounded)
        if key not in ("class", "params"):
            _walk(value, f"{where}: {_brief(key, 40)}")
    return values


def validate_model_config(d) -> dict:
    """Check the `model_config` of a converted directory (ModelConfig.to_dict() written as JSON)."""
    import dataclasses

    from fcfi_jax.models.is_model import ModelConfig

    where = "model_config"
    if not isinstance(d, dict):
        raise ConfigError(f"{where} is {_brief(d)}, expected a dict of ModelConfig fields")
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(k[:40] if isinstance(k, str) else _brief(k, 40) for k in d if k not in known)
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown[:8]}; known: {sorted(known)}")
    if "family" not in d:
        raise ConfigError(f"{where}: 'family' is missing (expected 'hrnet' or 'deeplab')")
    _check("family", d["family"], _one_of("hrnet", "deeplab"), where)
    for name, value in d.items():
        if name != "family":
            _check(name, value, FIELDS[name], where)
    return d
