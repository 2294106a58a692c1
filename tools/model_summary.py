"""Parameter counts per module and FLOPs of one forward (XLA cost analysis) for an FCFI model.

    python tools/model_summary.py --checkpoint hrnet18s.pth --size 480,640
    python tools/model_summary.py --config hrnet18s --size 320,480      # released architecture, random weights
"""
import argparse
import collections
import json
import sys
import time

from fcfi_jax.models.is_model import RELEASED_ARCHS as KNOWN  # noqa: E402  (the released architectures)


def summarize(model, size, batch=1, depth=2):
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from fcfi_jax.convert.mapping import model_variables

    counts = collections.Counter()
    for key, var in model_variables(model):
        if isinstance(var, nnx.Param):
            counts[".".join(key.split(".")[:depth])] += int(np.prod(var.get_value().shape))
    h, w = size
    x = jnp.zeros((batch, h, w, 4), jnp.float32)
    pts = jnp.full((batch, 2, 3), -1.0).at[:, 0].set(jnp.asarray([h // 2, w // 2, 0.0]))
    new = jnp.asarray([[[h // 2, w // 2, 1]]] * batch, jnp.int32)
    graphdef, state = nnx.split(model)
    f = jax.jit(lambda s, *a: nnx.merge(graphdef, s)(*a))
    t0 = time.time()
    compiled = f.lower(state, x, pts, new, jnp.float32(1.0)).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return {"parameters_total": sum(counts.values()), "parameters_per_module": dict(sorted(counts.items())),
            "input": [batch, h, w, 4], "gflops_per_forward": round(cost.get("flops", float("nan")) / 1e9, 2),
            "compile_seconds": round(time.time() - t0, 1)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="official .pth or converted directory")
    src.add_argument("--config", choices=sorted(KNOWN), help="released architecture with random weights")
    parser.add_argument("--size", default="480,640", help="H,W of the network input")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--depth", type=int, default=2, help="key depth at which parameters are grouped")
    args = parser.parse_args(argv)
    try:
        size = tuple(int(v) for v in args.size.split(","))
        assert len(size) == 2 and min(size) > 0
    except (ValueError, AssertionError):
        parser.error(f"--size must be H,W with positive integers, got {args.size!r}")
    import fcfi_jax
    from fcfi_jax.models.is_model import build_model

    model = fcfi_jax.load_model(args.checkpoint) if args.checkpoint else build_model(KNOWN[args.config])
    print(json.dumps(summarize(model, size, args.batch, args.depth), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
