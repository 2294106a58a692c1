"""Where does the time go? Per-op profile of a compiled forward (or predictor click) on this backend.

    python tools/profile.py --model hrnet18s --size 480x640 --top 30
    python tools/profile.py --what click --top 30            # the network call of a zoom-in + flip click (2x525x700)
    python tools/profile.py --model r101 --size 480x640 --kernels reference   # XLA's convolutions everywhere

Runs the program under `jax.profiler.trace`, sums the device-side events of every HLO instruction over the
profiled runs and prints the slowest ones with what they compute (read from the optimized HLO: the
convolutions / dots inside a fusion with their shapes, or the top-level op), plus totals per category
(convolution, dot, elementwise, reduce, copy/transpose, ...). `--dump DIR` keeps the optimized HLO text.
Use it to decide what to optimise; `tools/benchmark.py` gives the timings to quote.
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

_INSTR = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (\S+?) (\w[\w\-]*)\(")
_COMP = re.compile(r"^%([\w.\-]+) .*\{\s*$")


def _hlo_index(text):
    """{instruction name: (shape, opcode, called computation or None)}, {computation: [body lines]}."""
    instrs, comps, cur = {}, collections.defaultdict(list), None
    for line in text.splitlines():
        m = _COMP.match(line)
        if m:
            cur = m.group(1)
            continue
        if line.startswith("}"):
            cur = None
            continue
        m = _INSTR.match(line)
        if m:
            called = re.search(r"calls=%([\w.\-]+)", line)
            instrs[m.group(1)] = (m.group(2), m.group(3), called.group(1) if called else None, line)
            if cur is not None:
                comps[cur].append(line)
    return instrs, comps


def _describe(name, instrs, comps):
    """(category, short description) of one top-level instruction."""
    if name not in instrs:
        return "other", ""
    shape, op, called, line = instrs[name]
    if op == "custom-call" and 'custom_call_target="fcfi_direct_conv"' in line:
        dims = re.findall(r"f32\[([\d,]+)\]", line)  # the output, then the operands (x, w, ...)
        attrs = dict(re.findall(r"(\w+) = (\d+) : i64", line))
        k = dims[2].split(",")[0] if len(dims) > 2 else "?"
        return "direct conv", (f"direct conv{k}x{k} stride {attrs.get('stride', '?')} dilation "
                               f"{attrs.get('dilation', '1')} [{dims[1] if len(dims) > 1 else '?'}] -> [{dims[0]}]"
                               + (" +residual" if attrs.get("has_residual") == "1" else ""))
    body = comps.get(called, []) if called else []
    convs, dots = [], []
    for b in body:
        m = _INSTR.match(b)
        if not m:
            continue
        if m.group(3) == "convolution":
            win = re.search(r"window=\{size=(\w+)", b)
            groups = re.search(r"feature_group_count=(\d+)", b)
            operands = re.findall(r"f32\[[\d,]+\]|bf16\[[\d,]+\]", b)
            convs.append(f"conv{win.group(1) if win else '?'} {m.group(2)}"
                         + (f" groups={groups.group(1)}" if groups else "")
                         + (f" w={operands[-1]}" if len(operands) > 1 else ""))
        elif m.group(3) == "dot":
            dots.append(f"dot {m.group(2)}")
    ops = collections.Counter(_INSTR.match(b).group(3) for b in body if _INSTR.match(b))
    if convs:
        cat = "convolution"
    elif dots or op == "dot":
        cat = "dot"
    elif op in ("copy", "transpose") or (ops and set(ops) <= {"parameter", "copy", "transpose", "bitcast"}):
        cat = "copy/transpose"
    elif "reduce" in ops or op == "reduce":
        cat = "reduce"
    elif "gather" in ops or op == "gather" or "dynamic-slice" in ops:
        cat = "gather/slice"
    elif op in ("fusion",):
        cat = "elementwise"
    else:
        cat = op
    desc = "; ".join(convs + dots) if (convs or dots) else (
        f"{op} -> {shape}" + (f"  [{', '.join(k for k, _ in ops.most_common(5) if k != 'parameter')}]" if ops else ""))
    return cat, desc


def profile(fn, runs, hlo_text, top, out=sys.stdout):
    """Profile `fn()` (already warm) `runs` times; print the top instructions and the per-category totals."""
    import jax

    instrs, comps = _hlo_index(hlo_text)
    t0 = time.perf_counter()
    for _ in range(runs):
        fn()
    wall_ms = (time.perf_counter() - t0) / runs * 1e3
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d):
            for _ in range(runs):
                fn()
        f = sorted(glob.glob(os.path.join(d, "plugins", "profile", "*", "*.trace.json.gz")))[-1]
        events = json.load(gzip.open(f))["traceEvents"]
    tot, cnt = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("ph") == "X" and e["name"] in instrs:
            tot[e["name"]] += e["dur"] / 1e3 / runs
            cnt[e["name"]] += 1
    total = sum(tot.values())
    cats = collections.Counter()
    rows = []
    for name, ms in tot.items():
        cat, desc = _describe(name, instrs, comps)
        cats[cat] += ms
        rows.append((ms, name, cat, desc))
    rows.sort(reverse=True)
    print(f"sum of per-op time per run: {total:.1f} ms over {len(tot)} instructions "
          f"(ops run concurrently on the thread pool can overlap); wall time per run {wall_ms:.1f} ms", file=out)
    print("note: on CPU the convolutions run as asynchronous Eigen tasks whose events cover little of their "
          "time, so the\nconvolution total is far too low; the gap to the wall time is mostly convolution "
          "(time them alone to compare)", file=out)
    print("\nby category:", file=out)
    for cat, ms in cats.most_common():
        print(f"  {cat:16s} {ms:8.1f} ms  {100 * ms / max(total, 1e-9):5.1f}%", file=out)
    print(f"\ntop {top}:", file=out)
    for ms, name, cat, desc in rows[:top]:
        print(f"  {ms:8.2f} ms  {name:32s} {cat:14s} {desc[:150]}", file=out)
    return rows, cats


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--what", default="forward", choices=["forward", "click"])
    p.add_argument("--model", default="hrnet18s", choices=["hrnet18s", "r101"])
    p.add_argument("--size", default="480x640")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--canvas-step", type=int, default=16, help="canvas bucket of the click program (0: exact shape)")
    p.add_argument("--dump", default=None, help="write the optimized HLO text here")
    p.add_argument("--kernels", default="backend", choices=["backend", "reference"],
                   help="forward: this backend's kernels (`fcfi_jax.ops.for_backend()`, what the predictor uses) or "
                        "the reference layers (XLA's convolutions everywhere)")
    args = p.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from fcfi_jax import ops
    from fcfi_jax.models.is_model import RELEASED_ARCHS, build_model
    from fcfi_jax.xla_options import compiler_options

    model = build_model(RELEASED_ARCHS[args.model])
    h, w = (int(v) for v in args.size.split("x"))
    if args.what == "forward":
        b = args.batch
        x = jnp.zeros((b, h, w, 4), jnp.float32)
        pts = jnp.full((b, 48, 3), -1.0).at[:, 0].set(jnp.asarray([h // 2, w // 2, 0.0]))
        new = jnp.asarray([[[h // 2, w // 2, 1]]] * b, jnp.int32)
        graphdef, state = nnx.split(model)
        dt = jnp.dtype(args.dtype)
        kernels = ops.for_backend() if args.kernels == "backend" else ops.REFERENCE

        def forward(s, x):  # the predictor's inference forward (on CPU: the direct conv kernel, fcfi_jax/ops/)
            m = ops.use_kernels(nnx.merge(graphdef, s), kernels)
            return m(x.astype(dt), pts, new, 1.0)["instances"]

        f = jax.jit(forward, compiler_options=compiler_options())
        compiled = f.lower(state, x).compile()
        text = compiled.as_text()
        run = lambda: compiled(state, x).block_until_ready()
    else:
        from fcfi_jax.inference.runner import CanvasRunner

        runner = CanvasRunner(model, step=args.canvas_step or None, dtype=jnp.dtype(args.dtype))
        rng = np.random.default_rng(0)
        h, w = 525, 700
        x = rng.random((2, h, w, 4), dtype=np.float32)
        pts = np.full((2, 48, 3), -1, np.float32)
        pts[:, 0] = (h // 2, w // 2, 0)
        new = np.asarray([[[h // 2, w // 2, 1]]] * 2, np.int32)
        run = lambda: runner(x, pts, new, 1.0)
        run()
        text = runner.compiled_text(x.shape, pts.shape, new.shape)
    run()
    if args.dump:
        os.makedirs(args.dump, exist_ok=True)
        with open(os.path.join(args.dump, f"{args.what}_{args.model}_{args.size}.hlo.txt"), "w") as fh:
            fh.write(text)
    profile(run, args.runs, text, args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
