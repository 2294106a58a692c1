"""Lockstep NoC evaluation (`--batch N`): the same clicks and IoUs whatever the batch, the device count and the
number of processes (2 processes of 4 simulated CPU devices, through the CLI). On the CPU the network runs per
sample (`one_sample_at_a_time`), so the IoUs are equal bit for bit, beyond the 1e-6 that `--batch N` promises."""
import json
import os
import socket
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(family="hrnet", width=6, ocr_width=8, mid_ch=8, with_aux_output=True, use_leaky_relu=True,
            expansion_ratio=0.3, use_disks=True, norm_radius=5, with_prev_mask=True)
N_CLICKS = 4


class SmallDataset:
    """5 synthetic samples of different sizes (portrait and landscape); sample 2 has a corrupt mask."""
    name = "Small"

    def __len__(self):
        return 5

    def __getitem__(self, i):
        if i == 2:
            raise ValueError("cannot read mask /x/2.png: not a valid image file")
        rng = np.random.default_rng(i)
        h, w = [(48, 64), (64, 40), None, (30, 50), (64, 64)][i]
        yy, xx = np.mgrid[:h, :w]
        gt = (((yy - h / 2) / (h / 3)) ** 2 + ((xx - w / 2) / (w / 4)) ** 2 < 1).astype(np.int32)
        gt[:2, :3] = -1
        image = (rng.random((h, w, 3)) * 80 + 120 * gt[..., None].clip(0)).astype(np.uint8)
        return SimpleNamespace(image=image, gt=gt, name=f"s{i}")


class MirroredDataset(SmallDataset):
    """9 samples: SmallDataset's 5, then 4, 3, 2 (corrupt), 1 again: 7 readable ones, so a batch of 8 holds
    different samples on both halves of the devices and one padding row."""

    def __len__(self):
        return 9

    def __getitem__(self, i):
        return super().__getitem__(i if i < 5 else 9 - i)


def summary(r):
    return [{k: s[k] for k in ("index", "clicks", "iou")} |
            {"rois": [c["zoom_roi_rmin_rmax_cmin_cmax"] for c in s["per_click"]]} for s in r["per_image"]]


def run(batch):
    from fcfi_jax.evaluation.lockstep import LockstepEvaluator
    from fcfi_jax.models.is_model import build_model

    # zoom target 64 and min crop 200 > image: the ROI is clamped to the image, zoom still resizes it
    ev = LockstepEvaluator(build_model(TINY, seed=0), zoom_in=(64, 3.0), batch=batch)
    r = ev.evaluate(SmallDataset(), N_CLICKS, progress=False)
    return {"batch": ev.batch, "devices": ev.mesh.devices.size, "compilations": ev.compile_count,
            "samples": summary(r)}


def assert_same(a, b):
    assert [s["index"] for s in a["samples"]] == [s["index"] for s in b["samples"]] == [0, 1, 3, 4]
    for x, y in zip(a["samples"], b["samples"]):
        assert x["clicks"] == y["clicks"] and x["rois"] == y["rois"]
        assert x["iou"] == y["iou"]


def assert_same_as_mirrored(ref, samples, n_clicks):
    """`samples` (of MirroredDataset, n_clicks clicks) against the SmallDataset `ref` (its first clicks)."""
    by_index = {s["index"]: s for s in ref["samples"]}
    assert [s["index"] for s in samples] == [0, 1, 3, 4, 5, 6, 8]
    for s in samples:
        x = by_index[s["index"] if s["index"] < 5 else 9 - s["index"]]
        assert s["clicks"] == x["clicks"][:n_clicks] and s["rois"] == x["rois"][:n_clicks]
        assert s["iou"] == x["iou"][:n_clicks]


@pytest.fixture(scope="module")
def batch1():
    return run(1)


def test_batch_with_padding_equals_batch_1(batch1, capsys):
    r3 = run(3)   # 4 samples: a full batch and one padded with copies
    assert r3["batch"] == 3 and r3["compilations"] == 1 and batch1["compilations"] == 1
    assert_same(batch1, r3)
    assert "skipping Small sample 2: cannot read mask" in capsys.readouterr().err
    assert any(c[2] for s in batch1["samples"] for c in s["clicks"])


def test_eight_devices_equal_one_device(batch1):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    p = subprocess.run([sys.executable, __file__, "--worker", "8"], env=env, cwd=REPO, capture_output=True,
                       text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    r8 = json.loads(p.stdout.strip().splitlines()[-1])
    assert r8["devices"] == 8 and r8["batch"] == 8
    assert_same(batch1, r8)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_of_four_devices_equal_one_device(batch1, tmp_path):
    """`python -m fcfi_jax.evaluate --batch 8` as 2 processes (CPU collectives over localhost) of 4 simulated
    devices each: process 1 reads and runs rows 4-7 of the batch (3 samples and the padding row), the processes
    share the first pass (shapes) and both get all the records, process 0 writes results.json and process 1
    nothing; the clicks, ROIs and IoUs are those of the 1-device batch-1 run."""
    from fcfi_jax.convert.checkpoint import save_converted
    from fcfi_jax.models.is_model import build_model

    n_clicks = 2
    ckpt = save_converted(build_model(TINY, seed=0), tmp_path / "tiny")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
               PYTHONUNBUFFERED="1")
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, __file__, "--cli-worker", "--checkpoint", str(ckpt), "--datasets",
                               "Small", "--output", str(tmp_path / f"out{i}"), "--n-clicks", str(n_clicks),
                               "--zoom-in", "64,3.0", "--batch", "8", "--cache-dir", str(tmp_path / f"xla{i}"),
                               f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
                              env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    try:
        outs = [p.communicate(timeout=900)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert all(p.returncode == 0 for p in procs), "\n----\n".join(o[-4000:] for o in outs)
    got = [json.loads([x for x in o.splitlines() if x.startswith("RESULTS ")][-1][8:]) for o in outs]
    assert got[0] == got[1]   # every process has every record
    r = json.loads((tmp_path / "out0" / "results.json").read_text())[0]
    assert r["n_samples"] == 7 and r["protocol"]["batch"] == 8 and r["protocol"]["devices"] == 8
    assert "of 2 processes" in r["timing"]["note"] and r["protocol"]["compilations"] == 1
    assert summary(r) == got[0]
    assert not (tmp_path / "out1").exists() and "wrote" not in outs[1]
    # the first pass (shapes) is shared: each corrupt sample is read, and reported, by one process
    assert "skipping Small sample 2:" in outs[0] and "skipping Small sample 2:" not in outs[1]
    assert "skipping Small sample 7:" in outs[1] and "skipping Small sample 7:" not in outs[0]
    assert_same_as_mirrored(batch1, got[0], n_clicks)


def _canvas_inputs(rng, sizes, canvas, model):
    """Flip pairs on a shared canvas, each sample with its own valid size, points and canvas geometry."""
    hc, wc = canvas
    xs, pts, nps, geos = [], [], [], []
    for h, w in sizes:
        x = np.zeros((2, hc, wc, 4), np.float32)
        x[:, :h, :w, :3] = rng.random((2, h, w, 3))
        x[:, :h, :w, 3] = rng.random((2, h, w)) > 0.5
        p = -np.ones((2, 2, 3), np.float32)
        p[:, 0], p[:, 1] = (h // 2, w // 2, 0), (h // 3, w // 4, 1)
        xs.append(x)
        pts.append(p)
        nps.append(np.array([[[h // 3, w // 4, 0]]] * 2, np.int32))
        geos.append(np.asarray(model.geometry((h, w))))
    return [np.stack(a) for a in (xs, pts, nps, geos)]


@pytest.mark.parametrize("kernels", ["reference", "backend"])
def test_network_per_sample_does_not_depend_on_the_batch(fixtures_dir, kernels):
    """The lockstep step's network on the CPU (`one_sample_at_a_time`, hrnet18s with random weights, canvas mode):
    each of 8 samples alone and in the batch of 8 (16 images with the flip) gives bit-equal outputs, with XLA's
    convolutions and with the direct CPU kernel. Plain `jax.vmap` gave logits up to 2.0e-4 apart here (XLA:CPU
    chose other algorithms for the small maps of 16 images)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    import fcfi_jax
    from fcfi_jax import ops
    from fcfi_jax.evaluation.lockstep import one_sample_at_a_time
    from fcfi_jax.inference.click_step import model_net

    model = fcfi_jax.load_model(fixtures_dir / "hrnet18s_random.pth")
    graphdef, params = nnx.split(model)
    net = model_net(graphdef, ops.REFERENCE if kernels == "reference" else ops.for_backend())
    f = jax.jit(jax.vmap(one_sample_at_a_time(net), in_axes=(None, 0, 0, 0, None, 0)))
    sizes = [(60, 90), (64, 96), (50, 80), (40, 96), (64, 70), (56, 56), (36, 52), (62, 94)]
    x, p, n, g = _canvas_inputs(np.random.default_rng(0), sizes, (64, 96), model)
    batch = f(params, x, p, n, jnp.float32(1.0), g)
    for i in (0, 7):
        alone = f(params, x[i:i + 1], p[i:i + 1], n[i:i + 1], jnp.float32(1.0), g[i:i + 1])
        for name in ("instances", "updated_feedback1", "updated_feedback2"):
            np.testing.assert_array_equal(np.asarray(alone[name][0]), np.asarray(batch[name][i]),
                                          err_msg=f"sample {i}: {name}")


def test_cli_batch_flag(data_dir, tmp_path):
    from fcfi_jax.convert.checkpoint import save_converted
    from fcfi_jax.evaluation.evaluate import main
    from fcfi_jax.models.is_model import build_model

    ckpt = save_converted(build_model(TINY, seed=0), tmp_path / "tiny")
    out = tmp_path / "res"
    assert main(["--checkpoint", str(ckpt), "--datasets", "GrabCut", "--data-root", str(data_dir), "--output",
                 str(out), "--n-clicks", "2", "--limit", "2", "--every", "25", "--no-zoom-in", "--batch", "2",
                 "--cache-dir", str(tmp_path / "xla")]) == 0
    r = json.loads((out / "results.json").read_text())[0]
    assert r["n_samples"] == 2 and r["protocol"]["batch"] == 2 and r["protocol"]["compilations"] == 1
    assert r["protocol"]["net_per_sample"] is True   # the CPU backend
    for s in r["per_image"]:
        assert len(s["iou"]) == len(s["clicks"]) == 2
        assert s["per_click"][0]["net_input_shape"] == [2] + s["image_hw"] + [4]
    with pytest.raises(SystemExit):
        main(["--checkpoint", "x", "--output", str(out), "--batch", "0"])
    with pytest.raises(SystemExit):   # several processes: lockstep only
        main(["--checkpoint", "x", "--output", str(out), "--coordinator_address", "127.0.0.1:1"])


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    print(json.dumps(run(int(sys.argv[2]))))

if __name__ == "__main__" and sys.argv[1:2] == ["--cli-worker"]:
    # the evaluate CLI on MirroredDataset; every process prints the results it has (the CLI keeps them)
    import fcfi_jax.data.readers
    import fcfi_jax.evaluation.evaluate as cli

    fcfi_jax.data.readers.get_dataset = lambda name, root, **kw: MirroredDataset()
    lockstep = cli._evaluate_lockstep

    def evaluate_and_print(*a):
        results = lockstep(*a)
        print("RESULTS " + json.dumps(summary(results[0])), flush=True)
        return results

    cli._evaluate_lockstep = evaluate_and_print
    sys.exit(cli.main(sys.argv[2:]))
