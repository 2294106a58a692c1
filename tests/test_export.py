"""Deployment artifacts (tools/export.py, fcfi_jax/export, examples/onnx_predict.py).

Each artifact is exported through the command line, reloaded in a fresh Python process in which importing
fcfi_jax fails (and jax too, for ONNX and SavedModel), replays the golden clicks on the 333x417 golden crop with
the numpy host code of examples/onnx_predict.py, and must give the probabilities of `python -m fcfi_jax.predict`.

Tolerances. With trained weights (`hrnet18s_clicky.pth`) the artifacts match fcfi_jax.predict to ~4e-7, so the
bound is the issue's 1e-4. The random-weight fixtures amplify float32 rounding: on the golden crop two float32
JAX evaluations of the same HRNet18s (on a canvas and at the exact size) already differ by 9e-5 and fcfi_jax.predict
differs from the official probabilities by 1.1e-4; a max-abs bound of 1e-4 is below that noise, so they are
bounded at a few times it (and the mean error far lower), as in tests/test_parity.py.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import write_r101_checkpoint

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "onnx_predict.py"
CANVAS = "352,448"  # holds the 333x417 golden crop
# (max abs, mean abs) on the probabilities after the last click
TOL = {"hrnet18s_clicky": (1e-4, 1e-5), "hrnet18s_random": (5e-4, 1e-4), "r101": (2e-3, 2e-4)}

# Runs a script with some top-level packages made unimportable: proves the artifact needs nothing of them.
BLOCKER = r'''
import runpy, sys
class Block:
    def __init__(self, names):
        self.names = set(names)
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in self.names:
            raise ImportError(f"import of {name} blocked: the exported artifact must not need it")
        return None
blocked = sys.argv[1].split(",")
sys.meta_path.insert(0, Block(blocked))
for name in list(sys.modules):
    if name.partition(".")[0] in blocked:
        del sys.modules[name]
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
'''

# Replays clicks through a StableHLO or SavedModel artifact with the example's host code (shapes from the sidecar).
REPLAY = r'''
import importlib.util, json, sys
import cv2
import numpy as np
fmt, artifact, image, clicks, out = sys.argv[1:6]
spec = importlib.util.spec_from_file_location("onnx_predict", sys.argv[6])
example = importlib.util.module_from_spec(spec)
spec.loader.exec_module(example)
sidecar = json.load(open(artifact + ".json"))
shapes = {i["name"]: i["shape"] for i in sidecar["inputs"]}
names = [i["name"] for i in sidecar["inputs"]]
outputs = [o["name"] for o in sidecar["outputs"]]
if fmt == "stablehlo":
    import jax
    exported = jax.export.deserialize(bytearray(open(artifact, "rb").read()))
    call = jax.jit(exported.call)
    run = lambda feed: [np.asarray(o) for o in call(*(feed[n] for n in names))]
else:
    import tensorflow as tf
    fn = tf.saved_model.load(artifact).signatures["serving_default"]
    def run(feed):
        res = fn(**{n: tf.constant(v) for n, v in feed.items()})
        return [res[k].numpy() for k in outputs]
net = example.Network(run, shapes)
rgb = cv2.cvtColor(cv2.imread(image), cv2.COLOR_BGR2RGB)
session = example.Session(net, rgb, None, flip=False)
for y, x, p in example.parse_clicks(clicks):
    session.add_click(y, x, p)
np.save(out, session.probs)
'''


def _run(args, blocked=None, timeout=900):
    cmd = [sys.executable] + (["-c", BLOCKER, ",".join(blocked)] if blocked else []) + [str(a) for a in args]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=timeout, env=env)
    return res


def _ok(res):
    assert res.returncode == 0, f"exit {res.returncode}\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}"
    return res


def _check(probs, ref, tol, what):
    diff = np.abs(probs.astype(np.float64) - ref)
    print(f"{what}: max {diff.max():.2e} mean {diff.mean():.2e}")
    assert probs.shape == ref.shape
    assert diff.max() <= tol[0], f"{what}: max abs error {diff.max():.3e} > {tol[0]}"
    assert diff.mean() <= tol[1], f"{what}: mean abs error {diff.mean():.3e} > {tol[1]}"
    # the masks differ only where the probability is within the error of the 0.49 threshold
    flips = (probs > 0.49) != (ref > 0.49)
    assert np.all(np.abs(ref[flips] - 0.49) <= tol[0])


@pytest.fixture(scope="module")
def crop(fixtures_dir, tmp_path_factory):
    """(image path, clicks) of the golden 333x417 crop and its three official clicks."""
    import cv2

    g = np.load(fixtures_dir / "golden_hrnet18s_crop333x417.npz")
    path = tmp_path_factory.mktemp("crop") / "crop.png"
    cv2.imwrite(str(path), cv2.cvtColor(g["image_rgb"].astype(np.uint8), cv2.COLOR_RGB2BGR))
    clicks = ";".join(f"{int(y)},{int(x)},{'+' if p else '-'}" for (y, x), p in zip(g["click_yx"], g["click_is_positive"]))
    return path, clicks


@pytest.fixture(scope="module")
def checkpoints(fixtures_dir, tmp_path_factory):
    """name -> checkpoint path; the ResNet-101 .pth is written from the seeded weights on first use."""
    paths = {"hrnet18s_clicky": fixtures_dir / "hrnet18s_clicky.pth",
             "hrnet18s_random": fixtures_dir / "hrnet18s_random.pth"}

    def get(name):
        if name == "r101" and name not in paths:
            paths[name] = write_r101_checkpoint(fixtures_dir, tmp_path_factory.mktemp("r101") / "r101.pth")
        return paths[name]

    return get


@pytest.fixture(scope="module")
def predicted(checkpoints, crop, tmp_path_factory):
    """name -> fcfi_jax.predict probabilities (no zoom-in, no flip) on the crop, computed once per checkpoint."""
    cache = {}

    def get(name):
        if name not in cache:
            out = tmp_path_factory.mktemp(f"predict_{name}")
            _ok(_run(["-m", "fcfi_jax.predict", "--checkpoint", checkpoints(name), "--image", crop[0],
                      "--clicks", crop[1], "--output", out / "mask.png", "--save-probs", out / "probs.npy",
                      "--no-zoom-in", "--no-flip"]))
            cache[name] = np.load(out / "probs.npy").astype(np.float64)
        return cache[name]

    return get


def _export(checkpoint, fmt, output, *extra):
    res = _ok(_run(["tools/export.py", "--checkpoint", checkpoint, "--format", fmt, "--output", output, *extra]))
    assert "verified: max abs error" in res.stdout
    sidecar = json.loads(Path(str(output) + ".json").read_text())
    assert sidecar["format"] == fmt and sidecar["verification"]["max_abs_error"]
    return sidecar


def _onnx_case(name, checkpoints, predicted, crop, tmp_path):
    model = tmp_path / f"{name}.onnx"
    sidecar = _export(checkpoints(name), "onnx", model, "--canvas", CANVAS)
    assert [i["name"] for i in sidecar["inputs"]] == ["image", "points", "new_points", "gate", "valid_hw"]
    assert sidecar["inputs"][0]["shape"] == [1, 352, 448, 4] and sidecar["inputs"][1]["shape"] == [1, 48, 3]
    assert sidecar["shapes"]["max_input_hw"] == [352, 448] and sidecar["batch"] == 1
    # the example in a process where jax, flax, tensorflow and fcfi_jax cannot be imported
    res = _ok(_run([EXAMPLE, "--model", model, "--image", crop[0], "--clicks", crop[1], "--output", tmp_path / "m.png",
                    "--save-probs", tmp_path / "p.npy", "--no-zoom-in", "--no-flip"],
                   blocked=["jax", "jaxlib", "flax", "tensorflow", "fcfi_jax"]))
    assert res.stdout.count("click ") == 3 and (tmp_path / "m.png").is_file()
    _check(np.load(tmp_path / "p.npy"), predicted(name), TOL[name], f"onnx {name}")


def test_onnx_example_matches_predict(checkpoints, predicted, crop, tmp_path):
    """The issue's 'done when': export ONNX, replay the golden clicks with examples/onnx_predict.py without jax
    and fcfi_jax, and match fcfi_jax.predict within 1e-4 (trained HRNet18s weights)."""
    _onnx_case("hrnet18s_clicky", checkpoints, predicted, crop, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["hrnet18s_random", "r101"])
def test_onnx_example_matches_predict_random_weights(name, checkpoints, predicted, crop, tmp_path):
    _onnx_case(name, checkpoints, predicted, crop, tmp_path)


def _round_trip(fmt, name, checkpoints, predicted, crop, tmp_path):
    artifact = tmp_path / (f"{name}.jaxexport" if fmt == "stablehlo" else f"{name}_savedmodel")
    _export(checkpoints(name), fmt, artifact, "--canvas", CANVAS)
    # StableHLO needs jax (not fcfi_jax); the SavedModel needs TensorFlow only
    blocked = ["fcfi_jax", "flax"] + (["jax", "jaxlib"] if fmt == "savedmodel" else [])
    script = tmp_path / "replay.py"
    script.write_text(REPLAY)
    _ok(_run([script, fmt, artifact, crop[0], crop[1], tmp_path / "p.npy", EXAMPLE], blocked=blocked))
    _check(np.load(tmp_path / "p.npy"), predicted(name), TOL[name], f"{fmt} {name}")


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["stablehlo", "savedmodel"])
@pytest.mark.parametrize("name", ["hrnet18s_clicky", "hrnet18s_random", "r101"])
def test_round_trip_matches_predict(fmt, name, checkpoints, predicted, crop, tmp_path):
    _round_trip(fmt, name, checkpoints, predicted, crop, tmp_path)


@pytest.mark.slow
def test_onnx_flip_and_zoom_in_match_predict(checkpoints, crop, tmp_path):
    """Batch-2 (flip) export on a canvas that holds every zoomed input (longest side 400), zoom-in on: the
    example's numpy zoom-in and flip reproduce the predictor's."""
    ckpt = checkpoints("hrnet18s_clicky")
    model = tmp_path / "flip.onnx"
    sidecar = _export(ckpt, "onnx", model, "--canvas", "448,448", "--flip")
    assert sidecar["batch"] == 2 and sidecar["flip"]
    clicks = crop[1] + ";150,300,+;250,120,-"
    args = ["--image", crop[0], "--clicks", clicks, "--zoom-in", "400,3.0"]
    _ok(_run(["-m", "fcfi_jax.predict", "--checkpoint", ckpt, *args, "--output", tmp_path / "j.png",
              "--save-probs", tmp_path / "j.npy"]))
    _ok(_run([EXAMPLE, "--model", model, *args, "--output", tmp_path / "o.png", "--save-probs", tmp_path / "o.npy"],
             blocked=["jax", "jaxlib", "flax", "tensorflow", "fcfi_jax"]))
    _check(np.load(tmp_path / "o.npy"), np.load(tmp_path / "j.npy").astype(np.float64), TOL["hrnet18s_clicky"],
           "onnx flip+zoom-in")


@pytest.mark.parametrize("args,message", [
    (["--format", "tflite"], "unknown format 'tflite'"),
    (["--format", "onnx", "--checkpoint", "missing.pth"], "checkpoint not found: missing.pth"),
    (["--format", "onnx", "--canvas", "300,400", "--image", "CROP"], "canvas 300x400 cannot hold the 333x417 image"),
    (["--format", "onnx", "--canvas", "12"], "--canvas expects H,W"),
    (["--format", "onnx", "--dtype", "float16"], "only float32"),
])
def test_bad_arguments_fail_in_one_line(args, message, fixtures_dir, crop, tmp_path):
    args = [str(crop[0]) if a == "CROP" else a for a in args]
    if "--checkpoint" not in args:
        args += ["--checkpoint", str(fixtures_dir / "hrnet18s_random.pth")]
    out = tmp_path / "x.onnx"
    res = _run(["tools/export.py", "--output", out, *args], timeout=120)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("export: error: ") and message in lines[0], res.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_example_refuses_an_image_larger_than_the_canvas(tmp_path, crop):
    """The example reads the canvas from the model and stops with one line (an ONNX model of a tiny HRNet)."""
    pytest.importorskip("onnxruntime")
    from fcfi_jax.export import ExportSpec, network_function
    from fcfi_jax.export.formats import write_onnx

    model = _tiny_model()
    write_onnx(network_function(model, ExportSpec(64, 96)), ExportSpec(64, 96), tmp_path / "tiny.onnx")
    res = _run([EXAMPLE, "--model", tmp_path / "tiny.onnx", "--image", crop[0], "--clicks", "10,10,+",
                "--output", tmp_path / "m.png"], blocked=["jax", "fcfi_jax"])
    assert res.returncode == 2
    assert res.stderr.strip() == ("onnx_predict: error: the image is 333x417 but this model takes at most 64x96: "
                                  "export one with tools/export.py --canvas H,W")


def _tiny_model():
    from fcfi_jax.models.is_model import ModelConfig, build_model

    return build_model(ModelConfig(family="hrnet", width=8, ocr_width=16, small=True, mid_ch=8, expansion_ratio=0.3,
                                   use_disks=True, norm_radius=5, with_prev_mask=True, use_leaky_relu=True))


def test_export_that_does_not_reproduce_leaves_nothing(tmp_path, monkeypatch):
    """Verification: a faithful StableHLO export writes the artifact and its sidecar; one whose outputs are off
    raises ExportError and leaves no file (nor the previous artifact replaced)."""
    from fcfi_jax.export import ExportError, ExportSpec, export_model, formats

    model, spec = _tiny_model(), ExportSpec(64, 96, batch=2, max_clicks=4)
    out = tmp_path / "tiny.jaxexport"
    sidecar = export_model(model, spec, "stablehlo", str(out), log=lambda *a: None)
    assert out.is_file() and json.loads(Path(str(out) + ".json").read_text())["inputs"][1]["shape"] == [2, 8, 3]
    assert sidecar["verification"]["max_abs_error"]["instances_relative"] == 0.0
    before = out.read_bytes()

    load = formats.LOADERS["stablehlo"]
    monkeypatch.setitem(formats.LOADERS, "stablehlo",
                        lambda path: (lambda feed: [o + 1e-2 for o in load(path)(feed)]))
    with pytest.raises(ExportError, match="does not reproduce the model"):
        export_model(model, spec, "stablehlo", str(out), log=lambda *a: None)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.jaxexport", "tiny.jaxexport.json"]
