"""The trainer end to end on generated data (subprocesses of `python -m fcfi_jax.main`):

- a 6-step run writes checkpoints, TensorBoard logs, results.json and a model that the predictor loads;
- a run killed with SIGKILL and restarted resumes from its last checkpoint and ends with exactly the
  parameters of the uninterrupted run;
- 2 processes (CPU collectives over localhost) with 4 simulated CPU devices each, i.e. a global mesh of 8
  devices, give the loss, BatchNorm statistics and parameters of the 1-device run (tolerance: float32
  reduction order; stated below);
- bad config values fail fast with a clear message.
All runs share one synthetic dataset and one persistent compilation cache, so the train step compiles once.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = [  # a small HRNet on 64x96 crops; global batch 8 (divisible by 8 devices and 2 processes)
    "--config=configs/hrnet18s.py:local",
    "--config.data.crop_size=(64,96)", "--config.data.synthetic_size=(64,96)",
    "--config.data.synthetic_train=32", "--config.data.synthetic_val=4",
    "--config.batch_size=8", "--config.log_every=1", "--config.eval.at_start=False", "--config.eval.at_end=False",
]


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    env = dict(os.environ, FCFI_JAX_CACHE=str(root / "xla_cache"), TF_CPP_MIN_LOG_LEVEL="3",
               JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    env.pop("XLA_FLAGS", None)
    data = [f"--config.data.synthetic_root={root / 'synthetic'}", f"--config.data.tfds_data_dir={root / 'tfds'}"]
    # Build the dataset once, before any run (two processes must not build it concurrently).
    subprocess.run([sys.executable, "-c", f"""
from fcfi_jax.data.synthetic import prepare_synthetic_sbd
prepare_synthetic_sbd({str(root / 'synthetic')!r}, {str(root / 'tfds')!r}, num_train=32, num_val=4,
                      image_size=(64, 96), seed=0)"""], check=True, env=env, cwd=REPO, capture_output=True)
    return root, env, data


def _cmd(workdir, data, *extra):
    return [sys.executable, "-m", "fcfi_jax.main", *TINY, *data, f"--workdir={workdir}", *extra]


def _run(shared, workdir, *extra, env_extra=None, timeout=900):
    root, env, data = shared
    p = subprocess.run(_cmd(workdir, data, *extra), env=dict(env, **(env_extra or {})), cwd=REPO,
                       capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    return p.stdout


def _checkpoint(workdir, step=None):
    """(step, state dict) of a checkpoint, restored onto this process's first device whatever topology
    (devices, processes) wrote it."""
    import jax
    import orbax.checkpoint as ocp
    ckpts = Path(workdir) / "checkpoints"
    step = max(int(p.name) for p in ckpts.iterdir() if p.name.isdigit()) if step is None else step
    path = ckpts / str(step) / "default"
    ckptr = ocp.StandardCheckpointer()
    meta = ckptr.metadata(path).item_metadata
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), meta)
    return step, jax.tree.map(np.asarray, ckptr.restore(path, target))


def _metrics(workdir):
    return [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]


def _losses(stdout):
    return [float(line.split("loss ")[1].split()[0]) for line in stdout.splitlines() if line.startswith("step ")]


@pytest.fixture(scope="module")
def reference(shared):
    """The uninterrupted 6-step run on 1 device (checkpoints every step), with the final evaluation on."""
    workdir = shared[0] / "ref"
    out = _run(shared, workdir, "--config.total_steps=6", "--config.checkpoint_every_steps=1",
               "--config.keep_checkpoints=10", "--config.eval.at_end=True", "--config.eval.max_samples=2",
               "--config.eval.n_clicks=2")
    return workdir, out


def test_train_run_outputs(shared, reference):
    workdir, out = reference
    losses = _losses(out)
    assert len(losses) == 6 and all(np.isfinite(losses)), out
    step, state = _checkpoint(workdir)
    assert step == 6 and int(state["step"]) == 6
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [1, 2, 3, 4, 5, 6]
    assert any((workdir / "tensorboard").iterdir())
    res = json.loads((workdir / "results.json").read_text())
    assert res["total_steps"] == 6 and res["train"]["samples_per_second"] > 0
    # The exported model works with the inference code (and holds the trained parameters).
    import fcfi_jax
    from fcfi_jax.inference.predictor import Predictor
    from fcfi_jax.inference.runner import CanvasRunner
    model = fcfi_jax.load_model(workdir / "model")
    from flax import nnx
    w = np.asarray(nnx.to_pure_dict(nnx.state(model, nnx.Param))["maps_transform"][0]["weight"])
    np.testing.assert_array_equal(w, np.asarray(state["params"]["maps_transform"]["0"]["weight"]))
    pred = Predictor(CanvasRunner(model, step=None), zoom_in=None, with_flip=False)
    # The final evaluation in results.json is the standard evaluation of the exported model (the `:local` eval
    # settings: no zoom-in, no flip, exact shapes), on the generated val split's first 2 samples with 2 clicks.
    from fcfi_jax.data.readers import get_dataset
    from fcfi_jax.evaluation.evaluate import evaluate_dataset
    ours = evaluate_dataset(pred, get_dataset("SBD", shared[0] / "synthetic", split="val"), 2, [0, 1],
                            progress=False)
    assert res["eval_end"]["eval_samples"] == 2
    np.testing.assert_allclose([res["eval_end"][k] for k in ("noc85", "noc90", "miou_1")],
                               [ours["NoC"]["NoC@85"], ours["NoC"]["NoC@90"], ours["mIoU_per_click"][0]], atol=1e-6)
    pred.set_image(np.zeros((64, 96, 3), np.uint8))
    mask, probs = pred.add_click(30, 40, True)
    assert mask.shape == (64, 96) and np.isfinite(probs).all()


def test_sigkill_and_resume_equals_uninterrupted(shared, reference):
    ref_dir, _ = reference
    root, env, data = shared
    workdir = root / "killed"
    args = ["--config.total_steps=6", "--config.checkpoint_every_steps=1", "--config.keep_checkpoints=10"]
    proc = subprocess.Popen(_cmd(workdir, data, *args), env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    ckpts = workdir / "checkpoints"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        done = [int(p.name) for p in ckpts.iterdir() if p.name.isdigit()] if ckpts.is_dir() else []
        if done:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed:\n" + proc.stdout.read()
    killed_at = max(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())
    assert killed_at < 6
    out = _run(shared, workdir, *args)
    assert f"resumed from step {killed_at}" in out
    _, ref = _checkpoint(ref_dir, 6)
    _, got = _checkpoint(workdir, 6)
    import jax
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(ref), jax.tree.leaves(got)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(path))


# Same global batch, same random numbers (threefry is partitionable): only the float32 reduction order of
# the sharded BatchNorm statistics and gradients changes. So the first step's loss and BatchNorm statistics
# agree to float32 noise. Parameters after one Adam step (update = lr * sign(g) at step 1) agree except
# where a gradient component is ~0 and its sign is noise: those move by 2 * lr, and must be rare.
LOSS_RTOL, STATS_RTOL, FLIPPED_MAX = 2e-5, 1e-3, 0.01


def _compare_to_reference(ref_dir, workdir):
    ref, got = _metrics(ref_dir), _metrics(workdir)
    rel = abs(got[0]["loss"] / ref[0]["loss"] - 1)
    print(f"step-1 loss vs 1 device: {got[0]['loss']!r} vs {ref[0]['loss']!r} (rel {rel:.2g})")
    assert got[0]["step"] == ref[0]["step"] == 1 and rel < LOSS_RTOL
    _, a = _checkpoint(ref_dir, 1)
    _, b = _checkpoint(workdir, 1)
    for x, y in zip(jax_leaves(a["batch_stats"]), jax_leaves(b["batch_stats"])):
        np.testing.assert_allclose(y, x, rtol=STATS_RTOL, atol=1e-6)
    diffs = np.concatenate([np.abs(x - y).ravel() for x, y in zip(jax_leaves(a["params"]), jax_leaves(b["params"]))])
    flipped = float(np.mean(diffs > 1e-5))
    print(f"parameters after step 1: {flipped:.2%} differ (max {diffs.max():.2g}), the rest within 1e-5")
    assert flipped < FLIPPED_MAX and diffs.max() <= 2.5e-3  # lr 1e-3


def jax_leaves(tree):
    import jax
    return jax.tree.leaves(tree)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_of_four_devices_equal_one_device(shared, reference):
    root, env, data = shared
    env = dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    workdir = root / "two_processes"
    port = _free_port()
    procs = [subprocess.Popen(_cmd(workdir, data, "--config.total_steps=1", "--config.checkpoint_every_steps=1",
                                   f"--coordinator_address=127.0.0.1:{port}",
                                   "--num_processes=2", f"--process_id={i}"),
                              env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n----\n".join(o[-4000:] for o in outs)
    assert "on 8 device(s), 2 process(es)" in outs[0]
    _compare_to_reference(reference[0], workdir)


@pytest.mark.parametrize("override,message", [
    ("--config.batch_size=0", "batch_size=0 must be a positive multiple"),
    ("--config.batch_size=abc", "--config.batch_size=abc"),
    ("--config.compute_dtype=float16", "compute_dtype='float16'"),
    ("--config.data.source=tfds", "needs data.manual_dir"),
    ("--config.model.widht=8", 'Did you mean "width"'),
])
def test_bad_config_fails_fast(shared, tmp_path, override, message):
    root, env, data = shared
    p = subprocess.run(_cmd(tmp_path / "w", data, override), env=env, cwd=REPO, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode != 0
    assert message in p.stderr + p.stdout, p.stderr[-2000:]
    assert "Traceback" not in p.stderr


def test_corrupt_latest_checkpoint_names_the_step_and_the_way_out(shared, reference, tmp_path):
    """A corrupt latest checkpoint stops the resume with one line naming its step and how to resume from the one
    before (no orbax traceback), and nothing of the run is deleted."""
    import shutil

    root, env, data = shared
    workdir = tmp_path / "corrupt"
    shutil.copytree(reference[0] / "checkpoints", workdir / "checkpoints")
    for f in (workdir / "checkpoints" / "6").rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and f.suffix != ".json":
            f.write_bytes(b"\0" * 16)  # the step-6 arrays are now garbage
    p = subprocess.run(_cmd(workdir, data, "--config.total_steps=7", "--config.checkpoint_every_steps=1",
                            "--config.keep_checkpoints=10"), env=env, cwd=REPO, capture_output=True, text=True,
                       timeout=600)
    err = p.stderr.strip()
    assert p.returncode == 2, (p.stdout[-2000:], err[-3000:])
    assert "Traceback" not in err and "step 6" in err and "resume from step 5" in err, err[-3000:]
    assert sorted(int(d.name) for d in (workdir / "checkpoints").iterdir() if d.name.isdigit()) == [1, 2, 3, 4, 5, 6]
