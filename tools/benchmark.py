"""Speed benchmarks on whatever backend JAX sees (CPU here, GPU/TPU elsewhere). Prints a table, writes JSON.

    python tools/benchmark.py --output bench.json                       # forwards + predictor clicks
    python tools/benchmark.py --what forward --models hrnet18s --sizes 480x640 --repeats 15
    python tools/benchmark.py --what forward --models hrnet18s --dtype bfloat16 \\
        --checkpoint ../shared/fixtures/hrnet18s_clicky.pth              # + max |logit error| vs float32
    python tools/benchmark.py --what click --canvas-step 128            # first click and zoom-in + flip click
    python tools/benchmark.py --what eval --eval-images 50              # the GrabCut NoC evaluation, end to end
    python tools/benchmark.py --what eval --eval-images 50 --cache-dir /tmp/xla  # ... with a persistent cache
    python tools/benchmark.py --what train --models hrnet18s --batch 8  # train-step samples/s at 320x480
    python tools/benchmark.py --what lockstep --models hrnet18s --eval-images 8 --lockstep-batches 1,4,8
                                                                        # device-step evaluation, clicks/s per batch
    python tools/benchmark.py --what onnx --models hrnet18s --sizes 480x640  # onnxruntime vs fcfi_jax per click,
                                                                        # artifact sizes (needs the export extra)
    python tools/benchmark.py --what forward,eval --models hrnet18s --eval-images 15 \
        --official /path/to/FCFI                                          # + the official code, same hour
    python tools/benchmark.py --what forward --models r101 --sizes 480x640 --official /path/to/FCFI

Every timing is taken after warm-up (compilation excluded) with the device synchronised; the table shows
the median and the spread (min..max). FLOPs come from XLA's cost analysis of the compiled program. The
click rows report the network input, the canvas and the number of XLA compilations; the evaluation row
includes compilation. `--wait-idle 0.85` waits (up to 30 s) before every timed run until the machine's
CPUs are at least 85% idle, for shared machines; the idle fractions seen are reported.
`FCFI_JAX_XLA_DEFAULTS=1` measures with XLA's default CPU options (see fcfi_jax/xla_options.py).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

from bench_inputs import DATA_ROOT, checkout_error, real_input

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

MODELS = ("hrnet18s", "r101")
_IDLE = {"threshold": 0.0, "seen": []}


def _idle_fraction(dt=0.3):
    def snap():
        with open("/proc/stat") as f:
            v = [int(t) for t in f.readline().split()[1:]]
        return v[3] + v[4], sum(v)

    i0, t0 = snap()
    time.sleep(dt)
    i1, t1 = snap()
    return (i1 - i0) / max(t1 - t0, 1)


def _wait_idle():
    if _IDLE["threshold"] <= 0 or not os.path.exists("/proc/stat"):
        return
    t0, f = time.time(), 0.0
    while time.time() - t0 < 30:
        f = _idle_fraction()
        if f >= _IDLE["threshold"]:
            break
    _IDLE["seen"].append(f)


def _timeit(fn, repeats):
    fn()  # warm-up (compiles)
    times = []
    for _ in range(repeats):
        _wait_idle()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "n": repeats}


def _released(name):
    from fcfi_jax.models.is_model import RELEASED_ARCHS, build_model

    return build_model(RELEASED_ARCHS[name])


def _opts():
    from fcfi_jax.xla_options import compiler_options

    return compiler_options()


def forward_row(model, name, size, batch, repeats, dtype, data_root="."):
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from fcfi_jax import ops

    h, w = size
    x, pts, new = (jnp.asarray(a) for a in real_input(data_root, h, w, batch))
    graphdef, state = nnx.split(model)
    kernels = ops.for_backend()  # what the predictor's runner uses: on CPU the direct conv kernel and XLA:CPU forms

    def program(dt):
        def f(s, x):
            m = ops.use_kernels(nnx.merge(graphdef, s), kernels)
            return m(x.astype(dt), pts, new, 1.0)["instances"]

        return jax.jit(f, compiler_options=_opts()).lower(state, x).compile()

    compiled = program(jnp.dtype(dtype))
    flops = _flops(compiled)
    t = _timeit(lambda: compiled(state, x).block_until_ready(), repeats)
    row = {"bench": "forward", "model": name, "input": f"{batch}x{h}x{w}", "dtype": dtype, **t,
           "gflop": flops / 1e9, "gflops_per_s": flops / 1e9 / t["median_s"]}
    if dtype != "float32":  # the reduced-precision forward against float32 on the same input
        ref = np.asarray(program(jnp.float32)(state, x), np.float32)
        out = np.asarray(compiled(state, x), np.float32)
        err = np.abs(out - ref)
        row.update({"max_abs_logit_err_vs_f32": float(err.max()), "mean_abs_logit_err_vs_f32": float(err.mean()),
                    "max_abs_logit_f32": float(np.abs(ref).max()),
                    "mask_agreement_vs_f32": float(np.mean((out > 0) == (ref > 0)))})
    return row


def _grabcut_480x640(data_root):
    """The first 480x640 GrabCut sample (its zoom-in ROI scales to a 525x700 network input)."""
    from fcfi_jax.data.readers import get_dataset

    ds = get_dataset("GrabCut", os.path.join(data_root, "GrabCut"))
    for i in range(len(ds)):
        s = ds[i]
        if s.image.shape[:2] == (480, 640):
            return s
    return ds[0]


def _flops(compiled):
    """XLA's FLOP count plus the direct conv kernel's (custom calls, which XLA counts as 0), counted as XLA counts
    convolutions (a Winograd layer as the convolution it computes)."""
    from fcfi_jax.ops.direct_conv import hlo_flops

    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", float("nan"))) + hlo_flops(compiled.as_text())


def click_rows(model, repeats, data_root, canvas_step, dtype="float32"):
    """Predictor clicks with flip in the official GrabCut setting (zoom-in 700 / 3.0, flip TTA): the first
    click of a 480x640 image (no zoom: network input 2x480x640) and a later click zoomed to 2x525x700."""
    import jax.numpy as jnp
    import numpy as np

    from fcfi_jax.inference.predictor import Click, Predictor
    from fcfi_jax.inference.runner import CanvasRunner, canvas_size

    sample = _grabcut_480x640(data_root)
    runner = CanvasRunner(model, step=canvas_step, dtype=jnp.dtype(dtype))
    pred = Predictor(runner, zoom_in=(700, 3.0), with_flip=True)
    pred.set_image(sample.image)
    ys, xs = np.nonzero(sample.gt == 1)
    y, x = int(ys.mean()), int(xs.mean())

    def canvas(shape):
        return "x".join(map(str, canvas_size(shape[1], shape[2], canvas_step))) if canvas_step else "exact"

    def first():
        pred.reset()
        pred.add_click(y, x, True)

    def row(bench, t, shape, keys_before):
        """The timed click's row; FLOPs from the program that served it (the canvas it added)."""
        (key,) = runner.canvases - keys_before
        gflop = _flops(runner.compiled(shape, key[-2], key[-1])) / 1e9
        return {"bench": bench, "model": "hrnet18s", "input": "x".join(map(str, shape[:3])),
                "canvas": canvas(shape), "zoom_in": "700,3.0", "flip": True, "dtype": dtype, **t,
                "xla_compilations": runner.xla_compilations, "gflop": gflop, "gflops_per_s": gflop / t["median_s"]}

    t = _timeit(first, repeats)
    rows = [row("click_first_flip", t, pred.net_input_shape, set())]
    # A second click inside a zoom ROI, as tools/time_official.py times the official predictor: the ground truth
    # as the previous probabilities and as ZoomIn's stored map (the session state after one click, set here), so
    # the ROI is the object's box expanded 3x (clamped) and the network input that ROI scaled to 700 on its long
    # side. Every timed call adds the click and takes it back (undo restores the state: no network call).
    pred.reset()
    gt = np.zeros(pred._state.probs.shape, np.float32)
    gt[:sample.gt.shape[0], :sample.gt.shape[1]] = sample.gt == 1
    pred._state = pred._state._replace(probs=jnp.asarray(gt), zmap=jnp.asarray(gt), has_zmap=jnp.bool_(True),
                                       clicks=pred._state.clicks.at[0].set(jnp.asarray([y, x, 1])),
                                       n_clicks=jnp.int32(1))
    pred._clicks = [Click(y, x, True)]

    def zoomed():
        pred.add_click(y, x, True)
        pred.undo()

    before = set(runner.canvases)
    zoomed()
    pred.add_click(y, x, True)
    shape = pred.net_input_shape
    pred.undo()
    rows.append(row("click_zoom_flip", _timeit(zoomed, repeats), shape, before))
    return rows


def onnx_rows(model, size, n_clicks, data_root, canvas_step, threads=0):
    """onnxruntime (CPU) against fcfi_jax per click, side by side: the network exported for an h x w canvas
    (tools/export.py's path, verification included) and driven by examples/onnx_predict.py's numpy session, and
    fcfi_jax's Predictor on the CanvasRunner (XLA, direct 3x3 kernel on CPU), the same clicks on the same image
    (a GrabCut photo resized to h x w; no zoom-in, no flip, so both run one h x w forward per click). The first
    click is reported apart (fcfi_jax compiles there). Also the artifact sizes: ONNX, and StableHLO (written, not
    verified) for comparison."""
    import importlib.util
    import tempfile

    import jax.numpy as jnp
    import numpy as np

    from fcfi_jax.export import ExportSpec, export_model, network_function
    from fcfi_jax.export.formats import write_stablehlo
    from fcfi_jax.inference.predictor import Predictor
    from fcfi_jax.inference.runner import CanvasRunner

    h, w = size
    x, _, _ = real_input(data_root, h, w, 1)
    image = np.clip(np.rint(x[0, :, :, :3] * 255), 0, 255).astype(np.uint8)
    # clicks spread over the image, alternating positive and negative after the first
    rng = np.random.default_rng(0)
    clicks = [(h // 2, w // 2, True)] + [(int(rng.integers(0, h)), int(rng.integers(0, w)), k % 2 == 1)
                                         for k in range(1, n_clicks)]
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples", "onnx_predict.py")
    spec_ = importlib.util.spec_from_file_location("onnx_predict", path)
    example = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(example)

    def session_times(add_click):
        times, probs = [], None
        for y, xx, p in clicks:
            _wait_idle()
            t0 = time.perf_counter()
            _, probs = add_click(y, xx, p)
            times.append(time.perf_counter() - t0)
        return times, np.asarray(probs, np.float64)

    with tempfile.TemporaryDirectory() as d:
        onnx_path, hlo_path = os.path.join(d, "net.onnx"), os.path.join(d, "net.jaxexport")
        spec = ExportSpec(h, w)
        t0 = time.perf_counter()
        sidecar = export_model(model, spec, "onnx", onnx_path, log=lambda *a: None)
        export_s = time.perf_counter() - t0
        write_stablehlo(network_function(model, spec), spec, hlo_path)
        sizes = {"onnx_bytes": sidecar["artifact_bytes"], "stablehlo_bytes": os.path.getsize(hlo_path)}
        import onnxruntime

        net = example.Network.from_onnx(onnx_path, threads=threads)
        sess = example.Session(net, image, zoom_in=None, flip=False)
        ort_times, ort_probs = session_times(sess.add_click)
    pred = Predictor(CanvasRunner(model, step=canvas_step, dtype=jnp.float32), zoom_in=None, with_flip=False)
    pred.set_image(image)
    jax_times, jax_probs = session_times(pred.add_click)
    import jax

    rows = []
    for name, version, times in (("onnxruntime", onnxruntime.__version__, ort_times),
                                 ("fcfi_jax", jax.__version__, jax_times)):
        steady = times[1:] or times
        rows.append({"bench": "onnx_vs_jax_click", "runtime": name, "version": version, "model": "hrnet18s",
                     "input": f"1x{h}x{w}", "canvas": f"{h}x{w}", "dtype": "float32", "clicks": len(times),
                     "first_click_s": times[0], "median_s": statistics.median(steady), "min_s": min(steady),
                     "max_s": max(steady), "n": len(steady),
                     **({"export_s": export_s, **sizes} if name == "onnxruntime" else {}),
                     "max_abs_prob_diff": float(np.abs(ort_probs - jax_probs).max())})
    return rows


def eval_row(model, n_images, data_root, canvas_step, cache_dir=None):
    from fcfi_jax.data.readers import get_dataset
    from fcfi_jax.evaluation.evaluate import build_predictor, evaluate_dataset
    from fcfi_jax.inference.runner import enable_compilation_cache

    if cache_dir:
        enable_compilation_cache(cache_dir)

    ds = get_dataset("GrabCut", os.path.join(data_root, "GrabCut"))
    pred = build_predictor(model, "GrabCut", canvas_step=canvas_step)
    t0 = time.perf_counter()
    r = evaluate_dataset(pred, ds, 20, range(min(n_images, len(ds))), progress=False)
    total = time.perf_counter() - t0
    n = r["n_samples"]
    return {"bench": "eval_grabcut", "model": "hrnet18s", "images": n, "clicks": 20 * n, "total_s": total,
            "s_per_click": total / (20 * n), "model_s_per_click": r["timing"]["model_seconds_per_click"],
            "canvas_step": canvas_step, "xla_compilations": pred.net.xla_compilations,
            "first_call_s": pred.net.first_call_seconds, "calls_on_a_larger_canvas": pred.net.reused_calls,
            "compilation_cache": cache_dir,
            "NoC@90": r["NoC"]["NoC@90"]}


def lockstep_rows(model, n_images, batches, data_root, canvas_step, n_clicks=20, batched_net_too=False):
    """GrabCut NoC evaluation with the device step (fcfi_jax/evaluation/lockstep.py) at several batch sizes:
    clicks/s in steady state (after the first click of each batch, which compiles), the host share of a step
    (Python + dispatch time of the step calls over the steady wall time) and the compilations. batched_net_too:
    every batch > 1 also with the network batched over the samples (`net_per_sample=False`, what GPUs and TPUs
    run), beside the backend's default."""
    import jax

    from fcfi_jax.data.readers import get_dataset
    from fcfi_jax.evaluation.evaluate import zoom_in_for
    from fcfi_jax.evaluation.lockstep import LockstepEvaluator

    ds = get_dataset("GrabCut", os.path.join(data_root, "GrabCut"))
    rows = []
    runs = [(b, None) for b in batches] + [(b, False) for b in batches if batched_net_too and b > 1]
    for b, per_sample in runs:
        ev = LockstepEvaluator(model, zoom_in=zoom_in_for(model.cfg.family, "GrabCut"), batch=b,
                               canvas_step=canvas_step or 16, net_per_sample=per_sample)
        t0 = time.perf_counter()
        r = ev.evaluate(ds, n_clicks, range(min(n_images, len(ds))), progress=False)
        total = time.perf_counter() - t0
        steady_clicks = sum(s["steady_clicks"] * s["samples"] for s in ev.stats)
        steady_s = sum(s["steady_s"] for s in ev.stats)
        host_s = sum(s["host_s"] for s in ev.stats)
        rows.append({"bench": "lockstep_grabcut", "model": "hrnet18s", "images": r["n_samples"], "batch": ev.batch,
                     "devices": jax.device_count(), "net_per_sample": ev.net_per_sample,
                     "clicks": n_clicks * r["n_samples"], "total_s": total,
                     "steady_clicks_per_s": steady_clicks / max(steady_s, 1e-9),
                     "first_click_s": [s["first_click_s"] for s in ev.stats],
                     "host_share_of_step": host_s / max(steady_s, 1e-9), "compilations": ev.compile_count,
                     "NoC@90": r["NoC"]["NoC@90"]})
    return rows


def train_row(name, size, batch, repeats, dtype):
    """Samples/s of the jitted training step (click simulation + forward/backward + Adam, official losses),
    compiled with this package's compiler options (`FCFI_JAX_XLA_DEFAULTS=1` for XLA's)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from fcfi_jax.training.train import ModelParts, make_train_step

    parts = ModelParts(_released(name))
    schedule = optax.constant_schedule(5e-4)
    tx = optax.adam(schedule)
    state = parts.init_state(tx)
    step = make_train_step(parts, tx, schedule, max_num_next_clicks=3, feedback_weight=0.2, seed=0,
                           compute_dtype=jnp.dtype(dtype))
    h, w = size
    rng = np.random.default_rng(0)
    gt = np.zeros((batch, h, w, 1), np.float32)
    gt[:, h // 4:3 * h // 4, w // 4:3 * w // 4] = 1
    points = np.full((batch, 48, 3), -1, np.float32)
    points[:, 0] = (h // 2, w // 2, 0)
    data = {"images": jnp.asarray(rng.random((batch, h, w, 3), dtype=np.float32)), "instances": jnp.asarray(gt),
            "points": jnp.asarray(points)}
    t0 = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=(0,), compiler_options=_opts()).lower(state, data).compile()
    compile_s = time.perf_counter() - t0
    box = {"state": state}

    def one():
        box["state"], m = compiled(box["state"], data)
        jax.block_until_ready(m)

    t = _timeit(one, repeats)
    gflop = _flops(compiled) / 1e9  # the click-simulation loop (0-3 forwards, drawn per step) as XLA counts it
    return {"bench": "train_step", "model": name, "input": f"{batch}x{h}x{w}", "dtype": dtype, **t,
            "gflop": gflop, "gflops_per_s": gflop / t["median_s"],
            "samples_per_s": batch / t["median_s"], "compile_s": compile_s,
            "note": "0-3 simulated clicks per step (drawn per step, as in training)"}


def _num(v, width):
    return f"{v:{width}.1f}" if v is not None else "-".rjust(width)


def official_rows(args, what, rows):
    """Run tools/time_official.py in a subprocess (its own threads, none of JAX's) on the forward sizes and
    evaluation images just measured; returns its rows plus one `vs_official` row per pair."""
    import subprocess
    import tempfile

    names = args.models.split(",")
    parts = sorted(what & {"forward", "eval"})
    if "eval" in parts and "hrnet18s" not in names:
        parts.remove("eval")
    if not parts:
        return []
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "official.json")
        cmd = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "time_official.py"),
               "--official", args.official, "--what", ",".join(parts), "--models", args.models, "--sizes", args.sizes,
               "--repeats", str(args.repeats), "--eval-images", str(args.eval_images), "--data-root", args.data_root,
               "--output", out] + (["--checkpoint", args.checkpoint] if args.checkpoint else [])
        rc = subprocess.run(cmd).returncode
        if rc != 0:  # its own error is printed above; keep this run's rows
            print(f"tools/time_official.py failed (exit {rc}): no official rows", file=sys.stderr)
            return []
        with open(out) as f:
            official = json.load(f)["rows"]
    result = []
    for o in official:
        o = {k: v for k, v in o.items() if k != "per_image"}
        result.append(o)
        for r in rows:
            if o["bench"] == "official_forward" and r["bench"] == "forward" and r["model"] == o["model"] \
                    and r["input"] == o["input"] and r["dtype"] == "float32":
                result.append({"bench": "vs_official", "model": o["model"], "what": f"forward {o['input']}",
                               "ours_s": r["median_s"], "official_s": o["median_s"],
                               "ours_over_official": r["median_s"] / o["median_s"]})
            if o["bench"] == "official_eval_grabcut" and r["bench"] == "eval_grabcut" and r["images"] == o["images"]:
                result.append({"bench": "vs_official", "model": "hrnet18s",
                               "what": f"GrabCut evaluation, {o['images']} images x 20 clicks",
                               "ours_s": r["total_s"], "official_s": o["total_s"],
                               "ours_over_official": r["total_s"] / o["total_s"]})
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--what", default="forward,click",
                   help="comma list of forward, click, eval, train, lockstep, onnx (onnxruntime vs fcfi_jax per "
                        "click on each --sizes canvas, and the artifact sizes)")
    p.add_argument("--models", default="hrnet18s,r101")
    p.add_argument("--checkpoint", default=None,
                   help="weights for hrnet18s (official .pth or converted directory; default: random weights of "
                        "the released architecture). Speed does not depend on them; the bfloat16 error does")
    p.add_argument("--sizes", default="320x480,480x640")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--canvas-step", type=int, default=16,
                   help="canvas bucket of the click and eval rows (the evaluation CLI's default); 0 = exact shapes")
    p.add_argument("--eval-images", type=int, default=2)
    p.add_argument("--lockstep-batches", default="1,4,8", help="batch sizes of --what lockstep")
    p.add_argument("--lockstep-clicks", type=int, default=20, help="clicks per sample of --what lockstep")
    p.add_argument("--lockstep-batched-net", action="store_true",
                   help="--what lockstep: also run each batch > 1 with the network batched over the samples (the "
                        "GPU/TPU form; on the CPU the default runs it per sample)")
    p.add_argument("--train-size", default="320x480")
    p.add_argument("--cache-dir", default=None,
                   help="JAX persistent compilation cache for the eval row (a second run loads, not compiles)")
    p.add_argument("--wait-idle", type=float, default=0.0, metavar="FRACTION",
                   help="before each timed run wait (<= 30 s) until this fraction of the CPUs is idle")
    p.add_argument("--data-root", default=DATA_ROOT)
    p.add_argument("--official", default=None, metavar="FCFI_CHECKOUT",
                   help="also time the official PyTorch code (tools/time_official.py) on the same models, forward "
                        "sizes and evaluation images, right after this run, and print the ratios")
    p.add_argument("--output", default=None, help="JSON file for the results")
    args = p.parse_args(argv)
    import jax

    _IDLE["threshold"] = args.wait_idle
    what = set(args.what.split(","))
    unknown = what - {"forward", "click", "eval", "train", "lockstep", "onnx"}
    if unknown:
        p.error(f"unknown --what {sorted(unknown)}; choose from forward, click, eval, train, lockstep, onnx")
    names = args.models.split(",")
    for name in names:
        if name not in MODELS:
            p.error(f"unknown model {name!r}; choose from {MODELS}")
    if args.official:
        error = checkout_error(args.official, names)
        if error:
            p.error(error)
    models = {}
    if what & {"forward", "click", "eval", "lockstep", "onnx"}:
        for name in names:
            if name == "hrnet18s" and args.checkpoint:
                import fcfi_jax

                models[name] = fcfi_jax.load_model(args.checkpoint)
            else:
                models[name] = _released(name)
    step = args.canvas_step or None
    rows = []

    def emit(row):
        rows.append(row)
        print(json.dumps(row), flush=True)

    if "forward" in what:
        for name, model in models.items():
            for s in args.sizes.split(","):
                h, w = (int(v) for v in s.split("x"))
                emit(forward_row(model, name, (h, w), args.batch, args.repeats, args.dtype, args.data_root))
    if "click" in what and "hrnet18s" in models:
        for row in click_rows(models["hrnet18s"], max(3, args.repeats // 3), args.data_root, step, args.dtype):
            emit(row)
    if "eval" in what and "hrnet18s" in models:
        emit(eval_row(models["hrnet18s"], args.eval_images, args.data_root, step, args.cache_dir))
    if "lockstep" in what and "hrnet18s" in models:
        batches = [int(b) for b in args.lockstep_batches.split(",")]
        for row in lockstep_rows(models["hrnet18s"], args.eval_images, batches, args.data_root, step,
                                 args.lockstep_clicks, args.lockstep_batched_net):
            emit(row)
    if "onnx" in what and "hrnet18s" in models:
        for s in args.sizes.split(","):
            h, w = (int(v) for v in s.split("x"))
            for row in onnx_rows(models["hrnet18s"], (h, w), max(3, args.repeats // 3), args.data_root, step):
                emit(row)
    if "train" in what:
        h, w = (int(v) for v in args.train_size.split("x"))
        for name in names:
            emit(train_row(name, (h, w), args.batch, max(3, args.repeats // 3), args.dtype))
    if args.official:
        for row in official_rows(args, what, rows):
            emit(row)
    env = {"backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
           "cpu_count": os.cpu_count(), "python": platform.python_version(), "jax": jax.__version__,
           "compiler_options": _opts()}
    if _IDLE["seen"]:
        env["idle_fraction_before_runs"] = {"min": min(_IDLE["seen"]), "median": statistics.median(_IDLE["seen"])}
    print(f"\nbackend {env['backend']} ({len(env['devices'])} device(s)), compiler options {env['compiler_options']}")
    if _IDLE["seen"]:
        print(f"idle fraction of the CPUs before the timed runs: min {env['idle_fraction_before_runs']['min']:.2f}, "
              f"median {env['idle_fraction_before_runs']['median']:.2f}")
    print(f"{'bench':17s} {'model':9s} {'input':12s} {'dtype':8s} {'median':>8s} {'min..max':>16s} {'GFLOP':>6s} "
          f"{'GFLOP/s':>7s}  notes")
    for r in rows:
        if "median_s" in r and r["bench"] != "onnx_vs_jax_click":
            notes = []
            if "canvas" in r:
                notes.append(f"canvas {r['canvas']}, {r['xla_compilations']} compilation(s)")
            if "max_abs_logit_err_vs_f32" in r:
                notes.append(f"max|logit err| vs f32 {r['max_abs_logit_err_vs_f32']:.3g} "
                             f"(max|logit| {r['max_abs_logit_f32']:.3g}, mask agreement {r['mask_agreement_vs_f32']:.5f})")
            if "samples_per_s" in r:
                notes.append(f"{r['samples_per_s']:.2f} samples/s, compile {r['compile_s']:.0f}s")
            print(f"{r['bench']:17s} {r.get('model', ''):9s} {r['input']:12s} {r['dtype']:8s} {r['median_s']:7.3f}s "
                  f"{r['min_s']:6.3f}..{r['max_s']:<7.3f}s {_num(r.get('gflop'), 6)} "
                  f"{_num(r.get('gflops_per_s'), 7)}  {'; '.join(notes)}")
        elif r["bench"] == "onnx_vs_jax_click":
            sizes = (f"; ONNX {r['onnx_bytes'] / 2**20:.1f} MiB, StableHLO {r['stablehlo_bytes'] / 2**20:.1f} MiB, "
                     f"export {r['export_s']:.0f}s" if "onnx_bytes" in r else "")
            print(f"{'click ' + r['runtime']:17s} {r['model']:9s} {r['input']:12s} {r['dtype']:8s} {r['median_s']:7.3f}s "
                  f"{r['min_s']:6.3f}..{r['max_s']:<7.3f}s  {r['version']}, first click {r['first_click_s']:.2f}s, "
                  f"{r['clicks']} clicks, max |prob diff| {r['max_abs_prob_diff']:.2g}{sizes}")
        elif r["bench"] == "vs_official":
            print(f"{'vs official':17s} {r['what']}: ours {r['ours_s']:.3f}s, official {r['official_s']:.3f}s, "
                  f"ours / official {r['ours_over_official']:.2f} ({1 / r['ours_over_official']:.2f}x faster), "
                  f"{r['model']}")
        elif r["bench"] == "lockstep_grabcut":
            print(f"{'lockstep eval':17s} {'hrnet18s':9s} {str(r['images']) + ' images':12s} {'float32':8s} "
                  f"batch {r['batch']} on {r['devices']} device(s), network "
                  f"{'per sample' if r['net_per_sample'] else 'batched'}: {r['steady_clicks_per_s']:.3f} clicks/s "
                  f"(after the first click), host share of a step {100 * r['host_share_of_step']:.2f}%, "
                  f"total {r['total_s']:.0f}s, {r['compilations']} compilation(s), NoC@90 {r['NoC@90']:.2f}")
        elif r["bench"] == "official_eval_grabcut":
            print(f"{'official eval':17s} {'hrnet18s':9s} {str(r['images']) + ' images':12s} {'float32':8s} "
                  f"{r['s_per_click']:7.3f}s/click, total {r['total_s']:.0f}s")
        else:
            print(f"{r['bench']:17s} {'hrnet18s':9s} {str(r['images']) + ' images':12s} {'float32':8s} "
                  f"{r['s_per_click']:7.3f}s/click (model {r['model_s_per_click']:.3f}s), total {r['total_s']:.0f}s, "
                  f"canvas step {r['canvas_step']}, {r['xla_compilations']} compilations (first calls {r['first_call_s']:.0f}s), "
                  f"{r['calls_on_a_larger_canvas']} calls on a larger canvas, "
                  f"NoC@90 {r['NoC@90']:.2f}")
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"env": env, "results": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
