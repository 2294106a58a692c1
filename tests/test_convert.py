"""The converter: strict key/shape checks, round trips through torch.save and orbax, CLI errors."""
import json
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

import fcfi_jax
from fcfi_jax.convert.checkpoint import convert_official, save_converted
from fcfi_jax.convert.mapping import ConversionError, export_official_state_dict, load_official_state_dict
from fcfi_jax.convert.torch_pickle import CheckpointError
from fcfi_jax.models.is_model import build_model, config_from_official

TINY = dict(family="hrnet", width=6, ocr_width=8, mid_ch=8, with_aux_output=True, use_leaky_relu=True,
            expansion_ratio=0.3, use_disks=True, norm_radius=5, with_prev_mask=True)
TINY_OFFICIAL_CONFIG = {"class": "isegm.model.is_hrnet_model.HRNetModel", "params": {
    "width": {"type": "builtin", "value": 6, "specified": True},
    "ocr_width": {"type": "builtin", "value": 8, "specified": True},
    "mid_ch": {"type": "builtin", "value": 8, "specified": True},
    "with_aux_output": {"type": "builtin", "value": True, "specified": True},
    "use_leaky_relu": {"type": "builtin", "value": True, "specified": True},
    "expansion_ratio": {"type": "builtin", "value": 0.3, "specified": True},
    "use_rgb_conv": {"type": "builtin", "value": False, "specified": True},
    "use_disks": {"type": "builtin", "value": True, "specified": True},
    "norm_radius": {"type": "builtin", "value": 5, "specified": True},
    "with_prev_mask": {"type": "builtin", "value": True, "specified": True},
    "small": {"type": "builtin", "value": False, "specified": False},
    "norm_layer": {"type": "class", "value": "torch.nn.modules.batchnorm.BatchNorm2d", "specified": False},
}}


def _forward(model, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.random((1, 64, 80, 4)), jnp.float32)
    pts = jnp.asarray([[[30, 40, 0], [-1, -1, -1]]], jnp.float32)
    new = jnp.asarray([[[30, 40, 1]]], jnp.int32)
    return {k: np.asarray(v) for k, v in model(x, pts, new, 1.0).items()}


@pytest.fixture(scope="module")
def tiny_state():
    model = build_model(TINY, seed=3)
    return model, export_official_state_dict(model)


def test_missing_unexpected_and_mismatched_keys_are_all_listed(tiny_state):
    model, sd = tiny_state
    bad = dict(sd)
    missing = "feature_extractor.fusion_module.residual_predictor.bn.running_var"
    del bad[missing]
    wrong = "feature_extractor.cls_head.weight"
    bad[wrong] = np.zeros((2, 16, 1, 1), np.float32)
    bad["feature_extractor.extra_head.weight"] = np.zeros(3, np.float32)
    bad["feature_extractor.bn1.num_batches_tracked"] = np.int64(7)  # droppable
    target = build_model(TINY, seed=4)
    with pytest.raises(ConversionError) as e:
        load_official_state_dict(target, bad)
    msg = str(e.value)
    assert "1 missing, 1 unexpected, 1 shape mismatches" in msg
    assert missing in msg and "feature_extractor.extra_head.weight" in msg and wrong in msg
    assert "num_batches_tracked" not in msg


def test_torch_save_round_trip_and_orbax(tiny_state, tmp_path):
    torch = pytest.importorskip("torch")
    model, sd = tiny_state
    sd = dict(sd, **{"feature_extractor.bn1.num_batches_tracked": np.int64(10)})
    path = tmp_path / "tiny.pth"
    torch.save({"state_dict": {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()},
                "config": TINY_OFFICIAL_CONFIG}, path)
    converted, report = convert_official(path)
    assert report["dropped_num_batches_tracked"] == 1
    ref = _forward(model)
    for k, v in _forward(converted).items():
        np.testing.assert_array_equal(v, ref[k], err_msg=k)
    out = save_converted(converted, tmp_path / "conv")
    loaded = fcfi_jax.load_model(out)
    for k, v in _forward(loaded).items():
        np.testing.assert_array_equal(v, ref[k], err_msg=k)
    assert json.loads((out / "model_config.json").read_text())["model_config"]["width"] == 6


def test_official_config_errors():
    cfg = json.loads(json.dumps(TINY_OFFICIAL_CONFIG))
    cfg["class"] = "isegm.model.is_segformer_model.SegFormerModel"
    with pytest.raises(ValueError, match="unknown model class"):
        config_from_official(cfg)
    cfg = json.loads(json.dumps(TINY_OFFICIAL_CONFIG))
    cfg["params"]["use_rgb_conv"]["value"] = True
    with pytest.raises(ValueError, match="use_rgb_conv"):
        config_from_official(cfg)


def test_bare_state_dict_and_bad_directory(tiny_state, tmp_path):
    torch = pytest.importorskip("torch")
    _, sd = tiny_state
    path = tmp_path / "bare.pth"
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}, path)
    with pytest.raises(CheckpointError, match="without the official 'config'"):
        convert_official(path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a converted fcfi_jax checkpoint"):
        fcfi_jax.load_model(tmp_path / "empty")


def test_cli_converts_the_official_checkpoint(fixtures_dir, tmp_path):
    out = tmp_path / "h18s"
    r = subprocess.run([sys.executable, "tools/convert.py", "--checkpoint", str(fixtures_dir / "hrnet18s_random.pth"),
                        "--output", str(out)], capture_output=True, text=True, cwd=_repo())
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["parameters"] == 10_156_998 and report["variables"] == 1639
    assert (out / "model_config.json").is_file()


def test_cli_one_line_error_on_truncated_file(fixtures_dir, tmp_path):
    bad = tmp_path / "half.pth"
    data = (fixtures_dir / "hrnet18s_random.pth").read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    r = subprocess.run([sys.executable, "tools/convert.py", "--checkpoint", str(bad), "--output", str(tmp_path / "o")],
                       capture_output=True, text=True, cwd=_repo())
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.startswith("convert:")]
    assert len(lines) == 1 and "not a PyTorch checkpoint" in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def _repo():
    import pathlib

    return pathlib.Path(__file__).resolve().parents[1]
