"""Time the official PyTorch FCFI code on this machine, to compare with tools/benchmark.py in the same hour.

    python tools/time_official.py --official /path/to/FCFI --what forward --sizes 480x640
    python tools/time_official.py --official /path/to/FCFI --what forward --models r101 --sizes 480x640
    python tools/time_official.py --official /path/to/FCFI --what eval --eval-images 15 \\
        --checkpoint ../shared/fixtures/hrnet18s_random.pth
    python tools/benchmark.py --what forward,eval --models hrnet18s --official /path/to/FCFI   # both, in turn

The speed of a shared or virtual machine drifts by tens of percent from one hour to the next, so a ratio
against official timings taken on another day says little; this runs the official code now. It needs a
checkout of the official repository (github.com/veizgyauzgyauz/FCFI; not shipped with this project) and
PyTorch (in the test extra). Models: hrnet18s (`--checkpoint`, default the fixtures' hrnet18s_random.pth) and
r101 (`--r101-checkpoint`, default the fixtures' r101_config.json with the official initialisation: the
speed does not depend on the weights). Rows:
- forward: the official `model.forward` (eval mode, no grad) on the same input as benchmark.py's forward
  row, median of `--repeats` after warm-up, per model and size;
- eval (hrnet18s): the official predictor (NoBRS, flip, the GrabCut zoom-in: target 700, expansion 3.0) and the
  official `evaluate_sample` (20 clicks, threshold 0.49) on the first N GrabCut images, as read by this
  project's reader; total wall time and the IoU after every click.

The official code predates NumPy 1.24 and PyTorch 2.6: this script restores `np.int`/`np.float`, loads the
checkpoint with `weights_only=False` (only for files you trust), and, when torchvision is not installed,
provides the two torchvision functions the official inference path imports. `isegm.data.datasets` (training
datasets, which need albumentations) is replaced by an empty module. Nothing in the official tree is changed.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import types

from bench_inputs import DATA_ROOT, FIXTURES, OFFICIAL_REPO, checkout_error, real_input

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
MODELS = ("hrnet18s", "r101")


def _compat(official: str):
    """Make the official package importable with today's NumPy / PyTorch (see the module docstring)."""
    import numpy as np
    import torch

    for name, alias in (("int", int), ("float", float)):
        if name not in np.__dict__:
            setattr(np, name, alias)
    load = torch.load
    torch.load = lambda *a, **k: load(*a, **{"weights_only": False, **k})
    try:
        import torchvision.ops  # noqa: F401
        import torchvision.transforms  # noqa: F401
    except ImportError:
        tv, ops, tr = (types.ModuleType(n) for n in ("torchvision", "torchvision.ops", "torchvision.transforms"))

        def masks_to_boxes(masks):  # (N, H, W) -> (N, 4) float x1, y1, x2, y2
            out = torch.zeros((masks.shape[0], 4), dtype=torch.float, device=masks.device)
            for i, m in enumerate(masks):
                y, x = torch.where(m != 0)
                out[i] = torch.stack([x.min(), y.min(), x.max(), y.max()]).float()
            return out

        class ToTensor:  # HWC uint8 -> CHW float / 255
            def __call__(self, pic):
                t = torch.from_numpy(np.ascontiguousarray(np.asarray(pic).transpose(2, 0, 1)))
                return t.float().div(255) if t.dtype == torch.uint8 else t.float()

        ops.masks_to_boxes, tr.ToTensor, tv.ops, tv.transforms = masks_to_boxes, ToTensor, ops, tr
        sys.modules.update({"torchvision": tv, "torchvision.ops": ops, "torchvision.transforms": tr})
    datasets = types.ModuleType("isegm.data.datasets")
    for name in ("GrabCutDataset", "BerkeleyDataset", "DavisDataset", "SBDEvaluationDataset", "PascalVocDataset"):
        setattr(datasets, name, None)
    sys.modules["isegm.data.datasets"] = datasets
    sys.path.insert(0, official)


def load_official(name, checkpoint):
    """The official model `name` in eval mode: from `checkpoint` (an official .pth), or for r101 without one
    from the fixtures' config with the official initialisation."""
    from isegm.inference.utils import load_is_model

    if checkpoint is None and name == "r101":
        with open(os.path.join(FIXTURES, "r101_config.json")) as f:
            return load_is_model({"config": json.load(f), "state_dict": {}}, "cpu")
    return load_is_model(checkpoint, "cpu")


def forward_row(model, name, size, repeats, data_root):
    import torch

    h, w = size
    x, pts, new = real_input(data_root, h, w, 1)
    x = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    pts, new = torch.from_numpy(pts), torch.from_numpy(new.astype("int64"))
    times = []
    with torch.no_grad():
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            model(x, pts, new, 1.0, is_training=False)
            if i:  # the first run is the warm-up
                times.append(time.perf_counter() - t0)
    return {"bench": "official_forward", "model": name, "input": f"1x{h}x{w}", "dtype": "float32",
            "median_s": statistics.median(times),
            "min_s": min(times), "max_s": max(times), "n": repeats}


def eval_row(model, n_images, data_root):
    import numpy as np
    from isegm.inference.evaluation import evaluate_sample
    from isegm.inference.predictors import get_predictor

    from fcfi_jax.data.readers import get_dataset

    ds = get_dataset("GrabCut", os.path.join(data_root, "GrabCut"))
    predictor = get_predictor(model, "NoBRS", "cpu", prob_thresh=0.49, predictor_params={},
                              zoom_in_params={"target_size": 700, "expansion_ratio": 3.0}, with_flip=True)
    n = min(n_images, len(ds))
    per_image, t_start = [], time.perf_counter()
    for i in range(n):
        s = ds[i]
        t0 = time.perf_counter()
        _, ious, *_ = evaluate_sample(s.name, s.image, s.gt.astype(np.int32), predictor, max_iou_thr=1.01,
                                      pred_thr=0.49, min_clicks=1, max_clicks=20, sample_id=i, dilation_ratio=0.02,
                                      expansion_ratio=model.feature_extractor.expansion_ratio)
        per_image.append({"image_name": s.name, "wall_s": time.perf_counter() - t0, "iou": [float(v) for v in ious]})
    total = time.perf_counter() - t_start
    return {"bench": "official_eval_grabcut", "model": "hrnet18s", "images": n, "clicks": 20 * n, "total_s": total,
            "s_per_click": total / (20 * n), "per_image": per_image}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--official", required=True, help=f"checkout of {OFFICIAL_REPO} (its root folder)")
    p.add_argument("--what", default="forward", help="comma list of forward, eval (eval: hrnet18s only)")
    p.add_argument("--models", default="hrnet18s", help=f"comma list of {', '.join(MODELS)} (the forward rows)")
    p.add_argument("--checkpoint", default=None,
                   help="official HRNet18s .pth (default: ../shared/fixtures/hrnet18s_random.pth)")
    p.add_argument("--r101-checkpoint", default=None,
                   help="official ResNet-101 .pth (default: ../shared/fixtures/r101_config.json, official init)")
    p.add_argument("--sizes", default="480x640")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--eval-images", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (the official measurements: 2)")
    p.add_argument("--data-root", default=DATA_ROOT)
    p.add_argument("--output", default=None, help="JSON file for the rows")
    args = p.parse_args(argv)
    what = set(args.what.split(","))
    if what - {"forward", "eval"}:
        p.error(f"unknown --what {sorted(what - {'forward', 'eval'})}; choose from forward, eval")
    names = args.models.split(",")
    if set(names) - set(MODELS):
        p.error(f"unknown --models {sorted(set(names) - set(MODELS))}; choose from {', '.join(MODELS)}")
    if "eval" in what and "hrnet18s" not in names:
        names.append("hrnet18s")
    official = os.path.abspath(args.official)
    error = checkout_error(official, names)
    if error:
        p.error(error)
    checkpoints = {"hrnet18s": args.checkpoint or os.path.join(FIXTURES, "hrnet18s_random.pth"),
                   "r101": args.r101_checkpoint}
    for name in names:
        if checkpoints[name] is not None and not os.path.isfile(checkpoints[name]):
            p.error(f"--{'checkpoint' if name == 'hrnet18s' else 'r101-checkpoint'} {checkpoints[name]}: no such file; "
                    f"pass an official {name} .pth")
    try:
        import torch
    except ImportError:
        p.error("PyTorch is not installed: pip install -e '.[test]' (or torch) to time the official code")

    _compat(official)
    torch.set_num_threads(args.threads)
    models = {name: load_official(name, checkpoints[name]) for name in names}
    rows = []
    if "forward" in what:
        for name in args.models.split(","):
            for s in args.sizes.split(","):
                rows.append(forward_row(models[name], name, tuple(int(v) for v in s.split("x")), args.repeats,
                                        args.data_root))
                print(json.dumps(rows[-1]), flush=True)
    if "eval" in what:
        rows.append(eval_row(models["hrnet18s"], args.eval_images, args.data_root))
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "per_image"}), flush=True)
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"torch": torch.__version__, "threads": args.threads, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
