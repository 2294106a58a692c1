"""Speed benchmarks on whatever backend JAX sees (CPU here, GPU/TPU elsewhere). Prints a table, writes JSON.

    python tools/benchmark.py --output bench.json                       # forwards + predictor click
    python tools/benchmark.py --what forward --models hrnet18s --sizes 480x640 --repeats 15
    python tools/benchmark.py --what eval --eval-images 2 --data-root ../shared/data

Every timing is taken after warm-up (compilation excluded) with the device synchronised; the table
shows the median and the spread (min..max). FLOPs come from XLA's cost analysis of the compiled
program. The evaluation benchmark includes compilation and reports the number of XLA compilations.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

MODELS = ("hrnet18s", "r101")


def _timeit(fn, repeats):
    fn()  # warm-up (compiles)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "n": repeats}


def _released(name):
    from fcfi_jax.models.is_model import build_model

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from model_summary import KNOWN

    return build_model(KNOWN[name])


def forward_row(model, name, size, batch, repeats, dtype):
    import jax
    import jax.numpy as jnp
    from flax import nnx

    h, w = size
    x = jnp.zeros((batch, h, w, 4), jnp.float32)
    pts = jnp.full((batch, 48, 3), -1.0).at[:, 0].set(jnp.asarray([h // 2, w // 2, 0.0]))
    new = jnp.asarray([[[h // 2, w // 2, 1]]] * batch, jnp.int32)
    graphdef, state = nnx.split(model)
    if dtype != "float32":
        state = jax.tree.map(lambda a: a.astype(dtype) if a.dtype == jnp.float32 else a, state)
    f = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x.astype(dtype), pts, new, 1.0, is_training=False)["instances"])
    compiled = f.lower(state, x).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", float("nan")))
    t = _timeit(lambda: compiled(state, x).block_until_ready(), repeats)
    return {"bench": "forward", "model": name, "input": f"{batch}x{h}x{w}", "dtype": dtype, **t,
            "gflop": flops / 1e9, "gflops_per_s": flops / 1e9 / t["median_s"]}


def click_row(model, repeats, data_root):
    """One predictor click with zoom-in (GrabCut 700/3.0) and flip, second click of a session."""
    import numpy as np

    from fcfi_jax.data.readers import get_dataset
    from fcfi_jax.inference.predictor import Predictor
    from fcfi_jax.inference.runner import CanvasRunner

    sample = get_dataset("GrabCut", os.path.join(data_root, "GrabCut"))[0]
    pred = Predictor(CanvasRunner(model), zoom_in=(700, 3.0), with_flip=True)
    pred.set_image(sample.image)
    ys, xs = np.nonzero(sample.gt == 1)
    y, x = int(ys.mean()), int(xs.mean())
    pred.add_click(y, x, True)

    def click():
        pred.add_click(y, x, True)
        pred.undo()

    t = _timeit(click, repeats)
    return {"bench": "predictor_click", "input": str(pred.net_input_shape), "zoom_in": "700,3.0", "flip": True, **t}


def eval_row(model, n_images, data_root):
    from fcfi_jax.data.readers import get_dataset
    from fcfi_jax.evaluation.evaluate import build_predictor, evaluate_dataset

    ds = get_dataset("GrabCut", os.path.join(data_root, "GrabCut"))
    pred = build_predictor(model, "GrabCut")
    t0 = time.perf_counter()
    r = evaluate_dataset(pred, ds, 20, range(n_images), progress=False)
    total = time.perf_counter() - t0
    return {"bench": "eval_grabcut", "images": n_images, "clicks": 20 * n_images, "total_s": total,
            "s_per_click": total / (20 * n_images), "xla_compilations": pred.net.xla_compilations,
            "NoC@90": r["NoC"]["NoC@90"]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--what", default="forward,click", help="comma list of forward, click, eval")
    p.add_argument("--models", default="hrnet18s,r101")
    p.add_argument("--sizes", default="320x480,480x640")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--eval-images", type=int, default=2)
    p.add_argument("--data-root", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
    p.add_argument("--output", default=None, help="JSON file for the results")
    args = p.parse_args(argv)
    import jax

    what = set(args.what.split(","))
    rows = []
    models = {}
    for name in args.models.split(","):
        if name not in MODELS:
            p.error(f"unknown model {name!r}; choose from {MODELS}")
        models[name] = _released(name)
    if "forward" in what:
        for name, model in models.items():
            for s in args.sizes.split(","):
                h, w = (int(v) for v in s.split("x"))
                rows.append(forward_row(model, name, (h, w), args.batch, args.repeats, args.dtype))
                print(json.dumps(rows[-1]), flush=True)
    if "click" in what and "hrnet18s" in models:
        rows.append(click_row(models["hrnet18s"], max(3, args.repeats // 3), args.data_root))
        print(json.dumps(rows[-1]), flush=True)
    if "eval" in what and "hrnet18s" in models:
        rows.append(eval_row(models["hrnet18s"], args.eval_images, args.data_root))
        print(json.dumps(rows[-1]), flush=True)
    env = {"backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
           "cpu_count": os.cpu_count(), "python": platform.python_version(), "jax": jax.__version__}
    print(f"\nbackend {env['backend']} ({len(env['devices'])} device(s))")
    print(f"{'bench':16s} {'model':9s} {'input':22s} {'median':>9s} {'min..max':>17s} {'GFLOP':>7s} {'GFLOP/s':>8s}")
    for r in rows:
        if "median_s" in r:
            print(f"{r['bench']:16s} {r.get('model', ''):9s} {r['input']:22s} {r['median_s']:8.3f}s "
                  f"{r['min_s']:7.3f}..{r['max_s']:<7.3f}s {r.get('gflop', float('nan')):7.1f} "
                  f"{r.get('gflops_per_s', float('nan')):8.1f}")
        else:
            print(f"{r['bench']:16s} {'hrnet18s':9s} {str(r['images']) + ' images':22s} {r['s_per_click']:8.3f}s/click "
                  f"total {r['total_s']:.0f}s, {r['xla_compilations']} compilations")
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"env": env, "results": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
