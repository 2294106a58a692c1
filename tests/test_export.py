"""Deployment artifacts (tools/export.py, fcfi_jax/export, examples/onnx_predict.py).

Each artifact is exported through the command line, reloaded in a fresh Python process in which importing
fcfi_jax fails (and jax too, for ONNX and SavedModel), replays the golden clicks on the 333x417 golden crop with
the numpy host code of examples/onnx_predict.py, and must give the probabilities of `python -m fcfi_jax.predict`.

Tolerances. With trained weights (`hrnet18s_clicky.pth`) the artifacts match fcfi_jax.predict to ~4e-7, so the
bound is the issue's 1e-4. The random-weight fixtures amplify float32 rounding, whoever computes: on the golden crop
fcfi_jax.predict in float32 is 9.9e-5 (max) from `fcfi_jax.predict --dtype float64`, its own float32 variants
(direct 3x3 kernel on or off, canvas or exact size) differ from each other by up to 1.2e-4, and the ONNX example
differs from float32 predict by 1.1e-4 but from float64 predict by only 7.4e-5 (1024 canvas). So for
hrnet18s_random the ONNX example is held to the issue's 1e-4 against the float64 predictor (no looser than
float32 predict's own error there), and against float32 predict at twice the measured difference.
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
TOL = {"hrnet18s_clicky": (1e-4, 1e-5), "hrnet18s_random": (2.5e-4, 3e-5), "r101": (2e-3, 2e-4)}
# ... against `fcfi_jax.predict --dtype float64` (measured: ONNX 7.4e-5 / 9.1e-6, float32 predict 9.9e-5 / 1.7e-5)
TOL_F64 = {"hrnet18s_random": (1e-4, 1.5e-5)}

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
    """(name, dtype) -> fcfi_jax.predict probabilities (no zoom-in, no flip) on the crop, computed once each."""
    cache = {}

    def get(name, dtype="float32"):
        if (name, dtype) not in cache:
            out = tmp_path_factory.mktemp(f"predict_{name}_{dtype}")
            _ok(_run(["-m", "fcfi_jax.predict", "--checkpoint", checkpoints(name), "--image", crop[0],
                      "--clicks", crop[1], "--output", out / "mask.png", "--save-probs", out / "probs.npy",
                      "--no-zoom-in", "--no-flip", "--dtype", dtype]))
            cache[name, dtype] = np.load(out / "probs.npy").astype(np.float64)
        return cache[name, dtype]

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
    probs = np.load(tmp_path / "p.npy")
    _check(probs, predicted(name), TOL[name], f"onnx {name}")
    if name in TOL_F64:
        ref64 = predicted(name, "float64")
        _check(predicted(name).astype(np.float32), ref64, (np.inf, np.inf), f"float32 predict {name} vs float64")
        _check(probs, ref64, TOL_F64[name], f"onnx {name} vs float64 predict")


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
    (["--format", "onnx", "--what", "session"], "unknown --what 'session'"),
    (["--format", "stablehlo", "--what", "step", "--size", "64,64"], "--size is for --what network"),
    (["--format", "stablehlo", "--what", "step", "--zoom-in", "720"], "--zoom-in expects TARGET,EXPANSION"),
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
                        lambda path: (lambda feed: [o + 0.1 for o in load(path)(feed)]))  # > the 3e-2 default
    with pytest.raises(ExportError, match="does not reproduce the model"):
        export_model(model, spec, "stablehlo", str(out), log=lambda *a: None)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.jaxexport", "tiny.jaxexport.json"]


def test_step_verification_compares_the_mask_away_from_the_threshold():
    """The click step's verification (`_compare_step`): a mask pixel may differ only where the probabilities are
    within their own error of the threshold; elsewhere, as any integer state, it must be equal."""
    from fcfi_jax.export import _compare_step
    from fcfi_jax.export.step import STEP_OUTPUTS

    probs = np.array([[0.1, 0.49002], [0.9, 0.3]], np.float32)
    want = [probs, probs > 0.49] + [np.zeros(2, np.int32)] * (len(STEP_OUTPUTS) - 2)
    assert _compare_step(want, want, 0.49) == ({"probs": 0.0}, [])
    near = [probs + np.float32(3e-5), want[1].copy()] + want[2:]
    near[1][0, 1] = False   # 0.49002 - 3e-5 would be below: a rounding may cross the threshold there
    assert _compare_step(near, want, 0.49)[1] == []
    far = [probs, want[1].copy()] + want[2:]
    far[1][1, 0] = False    # 0.9 is no rounding away from 0.49
    assert _compare_step(far, want, 0.49)[1] == ["mask"]


# Replays clicks through an exported click step with jax only (fcfi_jax and flax blocked): inputs by the
# sidecar's names and order, the state fed back from the new_state_* outputs.
STEP_REPLAY = r'''
import json, sys
import numpy as np
artifact, data, out = sys.argv[1:4]
sidecar = json.load(open(artifact + ".json"))
names = [i["name"] for i in sidecar["inputs"]]
outs = [o["name"] for o in sidecar["outputs"]]
d = np.load(data)
fmt = sidecar["format"]
if fmt == "stablehlo":
    import jax
    exported = jax.export.deserialize(bytearray(open(artifact, "rb").read()))
    call = jax.jit(exported.call)
    run = lambda feed: [np.asarray(o) for o in call(*(feed[n] for n in names))]
else:
    import onnxruntime as ort
    session = ort.InferenceSession(artifact, providers=["CPUExecutionProvider"])
    run = lambda feed: session.run(outs, feed)
state = {}
for i in sidecar["inputs"]:
    if i["name"].startswith("state_"):
        init = i["initial"]
        dt = np.dtype(i["dtype"])
        state[i["name"]] = (np.zeros(i["shape"], dt) if init == "zeros" else np.asarray(init, dt).reshape(i["shape"]))
result = {}
for k, click in enumerate(d["clicks"]):
    o = dict(zip(outs, run({"image": d["image"], "hw": d["hw"], "click": click, **state})))
    state = {"state_" + n[len("new_state_"):]: v for n, v in o.items() if n.startswith("new_state_")}
    result[f"probs{k}"], result[f"roi{k}"] = o["probs"], o["new_state_roi"]
    result[f"has_roi{k}"], result[f"net_hw{k}"] = o["new_state_has_roi"], o["new_state_net_hw"]
np.savez(out, **result)
'''


def _step_session(data_dir, tmp_path, canvas=(240, 320)):
    """A GrabCut image (banana1, 480x640, downscaled to the canvas) and four clicks from its ground truth:
    the object's and the background's innermost pixels, then two more object pixels far from the first."""
    import cv2

    from fcfi_jax.data.readers import get_dataset

    ds = get_dataset("GrabCut", data_dir / "GrabCut")
    sample = ds[ds.names.index("banana1")]
    h, w = canvas
    img = cv2.resize(sample.image, (w, h), interpolation=cv2.INTER_AREA)
    gt = cv2.resize((sample.gt == 1).astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
    inner = cv2.distanceTransform(gt, cv2.DIST_L2, 5)
    outer = cv2.distanceTransform(1 - gt, cv2.DIST_L2, 5)
    y0, x0 = np.unravel_index(np.argmax(inner), gt.shape)
    yb, xb = np.unravel_index(np.argmax(outer), gt.shape)
    ys, xs = np.nonzero(inner > 0.5 * inner.max())
    far = np.argsort(-((ys - y0) ** 2 + (xs - x0) ** 2))
    clicks = np.array([(y0, x0, 1), (yb, xb, 0), (ys[far[0]], xs[far[0]], 1), (ys[far[len(far) // 3]],
                       xs[far[len(far) // 3]], 1)], np.int32)
    image = (img.astype(np.float32) / np.float32(255)).astype(np.float32)
    data = tmp_path / "session.npz"
    np.savez(data, image=image, hw=np.array([h, w], np.int32), clicks=clicks)
    return data, image, clicks


def _step_reference(ckpt, image, clicks, spec):
    """fcfi_jax's click step (fcfi_jax.inference.click_step, the lockstep evaluator's step) on the clicks."""
    import jax.numpy as jnp

    import fcfi_jax
    from fcfi_jax.export.step import reference_step
    from fcfi_jax.inference.click_step import init_state

    model = fcfi_jax.load_model(ckpt)
    step = reference_step(model, spec)
    state, out = init_state(spec.config()), []
    hw = jnp.asarray(image.shape[:2], jnp.int32)
    for c in clicks:
        state, probs, _ = step(jnp.asarray(image), hw, jnp.asarray(c), state)
        out.append((np.asarray(probs), np.asarray(state.roi), bool(state.has_roi), np.asarray(state.net_hw)))
    return out


# Max abs difference of the probabilities at any of the four clicks (measured: see docs/export.md).
STEP_TOL = {"stablehlo": 6e-7, "onnx": 6e-7}


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["stablehlo", "onnx"])
def test_click_step_round_trip(fmt, fixtures_dir, data_dir, tmp_path):
    """The whole click step (zoom-in 240,3.0 and flip) exported, then replayed for four clicks on a GrabCut image
    in a process where fcfi_jax and flax cannot be imported (and jax neither for ONNX): the same zoom boxes and
    network input sizes as fcfi_jax's step at every click, probabilities within STEP_TOL."""
    from fcfi_jax.export.step import StepSpec

    ckpt = fixtures_dir / "hrnet18s_clicky.pth"
    data, image, clicks = _step_session(data_dir, tmp_path)
    spec = StepSpec(240, 320, zoom_in=(240, 3.0), flip=True, max_clicks=4)
    artifact = tmp_path / ("step.jaxexport" if fmt == "stablehlo" else "step.onnx")
    res = _ok(_run(["tools/export.py", "--checkpoint", ckpt, "--what", "step", "--format", fmt, "--output", artifact,
                    "--canvas", "240,320", "--zoom-in", "240,3.0", "--flip", "--max-clicks", "4"]))
    assert "verified: max abs error" in res.stdout
    sidecar = json.loads(Path(str(artifact) + ".json").read_text())
    assert sidecar["what"] == "click step" and sidecar["net_canvas_hw"] == [240, 320] and sidecar["flip"]
    assert [i["name"] for i in sidecar["inputs"]][:3] == ["image", "hw", "click"]
    blocked = ["fcfi_jax", "flax"] + (["jax", "jaxlib"] if fmt == "onnx" else [])
    script = tmp_path / "step_replay.py"
    script.write_text(STEP_REPLAY)
    _ok(_run([script, artifact, data, tmp_path / "out.npz"], blocked=blocked))
    got = np.load(tmp_path / "out.npz")
    ref = _step_reference(ckpt, image, clicks, spec)
    assert [r[2] for r in ref] == [False, True, True, True]  # clicks 2-4 run on a zoomed crop
    for k, (probs, roi, has_roi, net_hw) in enumerate(ref):
        assert bool(got[f"has_roi{k}"]) == has_roi and got[f"roi{k}"].tolist() == roi.tolist(), k
        assert got[f"net_hw{k}"].tolist() == net_hw.tolist(), k
        err = float(np.abs(got[f"probs{k}"].astype(np.float64) - probs).max())
        print(f"{fmt} click {k + 1}: roi {roi.tolist()} net {net_hw.tolist()} max abs {err:.2e}")
        assert err <= STEP_TOL[fmt], (k, err)


def test_exact_division_runs_in_onnxruntime_with_the_same_bits(tmp_path):
    """`models.rounding.div_f32` (FFCM's box, the click step's coordinates) exports to ONNX (it uses no bit
    operations: onnxruntime refuses int32 BitShift) and gives there the correctly rounded quotients it gives in
    JAX, on random integer pairs of its whole contract."""
    import jax
    import jax.numpy as jnp

    from fcfi_jax.models.rounding import div_f32

    rng = np.random.default_rng(0)
    q = rng.integers(1, 2 ** 24, 100_000)
    p = (rng.random(100_000) * np.minimum(2 ** 31 - 1, q * 2 ** 24 - 1)).astype(np.int64) * rng.choice([-1, 1], 100_000)
    q = np.concatenate([q, rng.integers(1, 2000, 100_000), [1, 1, 7, 640]]).astype(np.int32)
    p = np.concatenate([p, rng.integers(-4_000_000, 4_000_000, 100_000), [0, -1, 3, 476 * 160]]).astype(np.int32)
    got = np.asarray(jax.jit(div_f32)(jnp.asarray(p), jnp.asarray(q)))
    assert np.array_equal(got, (p.astype(np.float64) / q).astype(np.float32))

    ort = pytest.importorskip("onnxruntime")
    from jax2onnx import to_onnx

    n = 4096
    model = to_onnx(div_f32, [jax.ShapeDtypeStruct((n,), jnp.int32)] * 2, input_names=["p", "q"],
                    output_names=["r"], opset=17)
    (tmp_path / "div.onnx").write_bytes(model.SerializeToString())
    session = ort.InferenceSession(str(tmp_path / "div.onnx"), providers=["CPUExecutionProvider"])
    (r,) = session.run(["r"], {"p": p[-n:], "q": q[-n:]})
    assert np.array_equal(r, got[-n:])
