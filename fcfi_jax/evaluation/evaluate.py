"""The standard NoC evaluation (official protocol, docs/official_quirks.md #23): 20 clicks per sample from the official
clicker, zoom-in with per-dataset settings, flip TTA, NoC@80/85/90, NoF, mIoU per click, timing.

    python -m fcfi_jax.evaluate --checkpoint hrnet18s.pth --datasets GrabCut,Berkeley \
        --data-root /data/interactive --output results/hrnet18s

`--data-root` holds one folder per dataset (GrabCut/, Berkeley/, DAVIS/, SBD/, PascalVOC/, COCO_MVal/),
or pass `--dataset-dir NAME=PATH` per dataset. Writes `results.json` (metrics and, per sample, the
clicks and the IoU after every click), `summary.csv` and `miou.png`; `samples.jsonl` gets each sample as soon as
it is done (one sample at a time, without --batch), so an interrupted run keeps what it computed.

`--batch N` over several processes (multi-host): the same command on every host plus --coordinator_address,
--num_processes and --process_id (or --distributed on Cloud TPU), as for training (fcfi_jax/distributed.py); the
batch is sharded over the devices of all processes and process 0 writes the reports.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import pathlib
import sys
import time

import numpy as np

from fcfi_jax.evaluation.clicker import Clicker
from fcfi_jax.evaluation.metrics import compute_noc_metrics, iou
from fcfi_jax.inference.defaults import EVAL_CANVAS_STEP
from fcfi_jax.progress import Progress

# Official per-dataset zoom-in (target size, expansion ratio), configs/val/*.yml (docs/official_quirks.md #30).
ZOOM_IN = {
    "hrnet": {"GrabCut": (700, 3.0), "Berkeley": (720, 2.8), "DAVIS": (720, 3.5), "SBD": (480, 2.3)},
    "deeplab": {"GrabCut": (600, 3.2), "Berkeley": (720, 2.5), "DAVIS": (640, 3.0), "SBD": (480, 2.3)},
}
# Datasets without an official yml (PascalVOC, COCO_MVal) use the DAVIS setting of the family.
ZOOM_IN_FALLBACK = "DAVIS"


def zoom_in_for(family: str, dataset: str):
    table = ZOOM_IN[family]
    return table.get(dataset, table[ZOOM_IN_FALLBACK])


def evaluate_sample(predictor, image, gt, n_clicks=20, on_click=None):
    """Official evaluate_sample: always n_clicks clicks (no early stop); returns (ious, clicks, per_click)."""
    clicker = Clicker(gt_mask=gt)
    pred_mask = np.zeros(gt.shape, bool)
    predictor.set_image(image)
    ious, clicks, per_click = [], [], []
    for _ in range(n_clicks):
        t0 = time.perf_counter()
        click = clicker.make_next_click(pred_mask)
        pred_mask, _ = predictor.add_click(click.y, click.x, click.is_positive)
        ious.append(float(iou(pred_mask, gt)))
        clicks.append([int(click.y), int(click.x), bool(click.is_positive)])
        roi = predictor.roi
        per_click.append({"net_input_shape": list(predictor.net_input_shape),
                          "zoom_roi_rmin_rmax_cmin_cmax": None if roi is None else [int(v) for v in roi],
                          "wall_s": time.perf_counter() - t0})
        if on_click is not None:
            on_click()
    return ious, clicks, per_click


def evaluate_dataset(predictor, dataset, n_clicks=20, indices=None, progress=True, on_sample=None):
    """Run the protocol over `dataset` (a readers.EvalDataset); returns a results dict.

    on_sample(record): called with each finished sample's record (the CLI appends it to samples.jsonl, so an
    interrupted run keeps what it did)."""
    indices = list(range(len(dataset))) if indices is None else list(indices)
    runner = getattr(predictor, "net", None)
    model_s0 = getattr(runner, "model_seconds", 0.0)
    samples, all_ious = [], []
    t_start = time.perf_counter()
    bar = Progress(len(indices), dataset.name, unit="images", quiet=not progress)
    for n, i in enumerate(indices):
        try:
            sample = dataset[i]
        except ValueError as e:   # corrupt image or mask: report it and evaluate the rest
            print(f"evaluate: skipping {dataset.name} sample {i}: {e}", file=sys.stderr)
            continue
        ious, clicks, per_click = evaluate_sample(predictor, sample.image, sample.gt, n_clicks)
        all_ious.append(ious)
        samples.append({"index": int(i), "image_name": sample.name, "image_hw": list(sample.gt.shape),
                        "iou": ious, "clicks": clicks, "per_click": per_click})
        if on_sample is not None:
            on_sample(samples[-1])
        if progress:
            m = compute_noc_metrics(all_ious, max_clicks=n_clicks)
            bar.update(done=n + 1, info=f"NoC@85 {m.noc[1]:.2f} NoC@90 {m.noc[2]:.2f}")
    bar.close()
    elapsed = time.perf_counter() - t_start
    metrics = compute_noc_metrics(all_ious, max_clicks=n_clicks)
    n_total = n_clicks * len(samples)
    model_s = getattr(runner, "model_seconds", 0.0) - model_s0
    return {
        "dataset": dataset.name, "n_samples": len(samples), **metrics.as_dict(),
        "timing": {"wall_seconds": elapsed, "wall_seconds_per_click": elapsed / max(n_total, 1),
                   "model_seconds_per_click": model_s / max(n_total, 1),
                   "note": "wall = whole loop (image loading, clicker, transforms, model, IoU); "
                           "model = network calls only, device synchronised"},
        "per_image": samples,
    }


def write_reports(results: list[dict], out_dir) -> None:
    """results.json, summary.csv and miou.png (mIoU vs clicks for every dataset)."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    with open(out / "summary.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["dataset", "samples", "NoC@80", "NoC@85", "NoC@90", "NoF@85", "NoF@90", "mIoU@1", "mIoU@5",
                    "sec_per_click_wall", "sec_per_click_model"])
        for r in results:
            nof = r[f">={len(r['mIoU_per_click'])}"]
            miou = r["mIoU_per_click"]
            w.writerow([r["dataset"], r["n_samples"], f"{r['NoC']['NoC@80']:.2f}", f"{r['NoC']['NoC@85']:.2f}",
                        f"{r['NoC']['NoC@90']:.2f}", nof["@85"], nof["@90"], f"{miou[0]:.4f}",
                        f"{miou[min(4, len(miou) - 1)]:.4f}", f"{r['timing']['wall_seconds_per_click']:.3f}",
                        f"{r['timing']['model_seconds_per_click']:.3f}"])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results:
        miou = r["mIoU_per_click"]
        ax.plot(range(1, len(miou) + 1), miou, marker="o", ms=3, label=r["dataset"])
    ax.set_xlabel("number of clicks")
    ax.set_ylabel("mIoU")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "miou.png", dpi=100)
    plt.close(fig)


def build_predictor(model, dataset: str, zoom_in="official", with_flip=True, canvas_step=EVAL_CANVAS_STEP, runner=None,
                    dtype="float32"):
    """Predictor with the official settings for `dataset` (zoom_in: 'official', None or (target, ratio)).

    canvas_step 16: a zoomed 525x700 input runs on a 528x704 canvas (+1% pixels; 640x768, +34%, with 128).
    Small steps make many canvases, but a size met rarely runs on a larger compiled canvas instead of
    compiling its own (CanvasRunner's ski-rental rule): GrabCut's 1000 clicks compile 5 canvases.
    `runner`: a CanvasRunner to share (its compiled canvases) between the predictors of several datasets."""
    from fcfi_jax.inference.predictor import Predictor
    from fcfi_jax.inference.runner import CanvasRunner

    if zoom_in == "official":
        zoom_in = zoom_in_for(model.cfg.family, dataset)
    runner = runner if runner is not None else CanvasRunner(model, step=canvas_step)
    return Predictor(runner, zoom_in=zoom_in, with_flip=with_flip, dtype=dtype)


def main(argv=None):
    from fcfi_jax.data.readers import DATASETS, get_dataset

    p = argparse.ArgumentParser(description="FCFI NoC evaluation (official protocol)")
    p.add_argument("--checkpoint", required=True, help="official .pth or converted directory")
    p.add_argument("--datasets", default="GrabCut", help=f"comma-separated, from {', '.join(DATASETS)}")
    p.add_argument("--data-root", default=".", help="folder holding one sub-folder per dataset")
    p.add_argument("--dataset-dir", action="append", default=[], metavar="NAME=PATH",
                   help="explicit folder of one dataset (repeatable)")
    p.add_argument("--output", required=True, help="results folder")
    p.add_argument("--n-clicks", type=int, default=20)
    p.add_argument("--every", type=int, default=1, help="evaluate every k-th sample (quick runs)")
    p.add_argument("--limit", type=int, default=None, help="at most this many samples per dataset")
    p.add_argument("--batch", type=int, default=None,
                   help="evaluate N samples in lockstep, clicker and predictor in one compiled device program, the "
                        "batch sharded over all devices (fcfi_jax/evaluation/lockstep.py); default: one sample at "
                        "a time with Predictor (the same click step, the network between its two halves)")
    p.add_argument("--cache-dir", default=None, help="persistent XLA compilation cache (default ~/.cache/fcfi_jax)")
    from fcfi_jax import distributed
    from fcfi_jax.predict import add_predictor_args, check_output_dir, check_predictor_args

    add_predictor_args(p, zoom_in=None, canvas_step=EVAL_CANVAS_STEP)
    distributed.add_distributed_args(p.add_argument_group(
        "several processes (multi-host, with --batch only; process 0 writes the reports)"))
    args = p.parse_args(argv)
    multi = distributed.wants_distributed(args.distributed, args.coordinator_address)
    if multi and args.batch is None:
        p.error("several processes (--distributed, --coordinator_address) evaluate with --batch N only")

    overrides = {}
    for item in args.dataset_dir:
        if "=" not in item:
            p.error(f"--dataset-dir expects NAME=PATH, got {item!r}")
        k, v = item.split("=", 1)
        overrides[k.strip().lower()] = v
    try:
        zoom = check_predictor_args(args)
        if zoom is None and not args.no_zoom_in:   # no --zoom-in: the official one of each dataset
            zoom = "official"
        if not multi or args.process_id in (None, 0):   # a process told it is not process 0 writes nothing
            check_output_dir(args.output, "--output")
    except ValueError as e:
        p.error(str(e))
    if args.batch is not None and args.batch < 1:
        p.error(f"--batch must be a positive number of samples, got {args.batch}")
    if args.batch is not None and args.dtype != "float32":
        p.error("--dtype float64 runs one sample at a time: leave out --batch")
    if not 1 <= args.n_clicks <= 100:
        p.error(f"--n-clicks must be in [1, 100] (official: 20), got {args.n_clicks}")
    if args.every < 1:
        p.error(f"--every must be >= 1 (1 = every sample), got {args.every}")
    if args.limit is not None and args.limit < 1:
        p.error(f"--limit must be >= 1, got {args.limit}")
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    datasets = []
    for name in names:  # open every dataset first: a missing folder fails before any compute
        root = overrides.get(name.lower(), os.path.join(args.data_root, name))
        try:
            datasets.append(get_dataset(name, root))
        except (FileNotFoundError, ValueError) as e:
            print(f"evaluate: error: {e}", file=sys.stderr)
            return 2

    # before anything starts a JAX backend
    distributed.initialize(args.distributed, args.coordinator_address, args.num_processes, args.process_id)
    import fcfi_jax
    from fcfi_jax.inference.predictor import Predictor
    from fcfi_jax.inference.runner import CanvasRunner, enable_compilation_cache

    enable_compilation_cache(args.cache_dir)
    from fcfi_jax.convert.mapping import ConversionError
    from fcfi_jax.convert.torch_pickle import CheckpointError

    try:
        model = fcfi_jax.load_model(args.checkpoint, dtype=args.dtype)
    except (CheckpointError, ConversionError, FileNotFoundError) as e:
        print(f"evaluate: error: {e}", file=sys.stderr)
        return 2
    if args.batch is not None:
        import jax

        results = _evaluate_lockstep(model, datasets, zoom, args)
        if jax.process_index() == 0:   # every process has all the results (lockstep.py); one writes them
            write_reports(results, args.output)
            print(f"wrote {args.output}/results.json, summary.csv, miou.png")
        return 0
    # shared: a canvas compiles once for all datasets
    runner = CanvasRunner(model, step=args.canvas_step or None, dtype=args.dtype)
    results = []
    # Every finished sample is appended to samples.jsonl at once: an interrupted run keeps what it computed.
    progress_file = open(os.path.join(args.output, "samples.jsonl"), "w")

    def keep(dataset_name):
        def write(record):
            progress_file.write(json.dumps({"dataset": dataset_name, **record}) + "\n")
            progress_file.flush()
        return write

    for ds in datasets:
        compiled_before, reused_before = runner.compile_count, runner.reused_calls
        step_before = Predictor.step_compilations()
        predictor = build_predictor(model, ds.name, zoom, not args.no_flip, runner=runner, dtype=args.dtype)
        idx = list(range(0, len(ds), args.every))[:args.limit]
        r = evaluate_dataset(predictor, ds, args.n_clicks, idx, on_sample=keep(ds.name))
        compiled = runner.compile_count - compiled_before
        r["protocol"] = {"checkpoint": str(args.checkpoint), "zoom_in": predictor.zoom_in and
                         list(predictor.zoom_in),
                         "with_flip": not args.no_flip, "n_clicks": args.n_clicks, "pred_thr": 0.49,
                         "canvas_step": args.canvas_step, "compilations": compiled,
                         "step_compilations": Predictor.step_compilations() - step_before,
                         "calls_on_a_larger_canvas": runner.reused_calls - reused_before}
        results.append(r)
        print(f"{ds.name}: NoC@80 {r['NoC']['NoC@80']:.2f}  NoC@85 {r['NoC']['NoC@85']:.2f}  "
              f"NoC@90 {r['NoC']['NoC@90']:.2f}  NoF@90 {r[f'>={args.n_clicks}']['@90']}  "
              f"SPC {r['timing']['wall_seconds_per_click']:.2f}s (model {r['timing']['model_seconds_per_click']:.2f}s)"
              f"  compilations {compiled}")
    progress_file.close()
    write_reports(results, args.output)
    print(f"wrote {args.output}/results.json, summary.csv, miou.png")
    return 0


def _evaluate_lockstep(model, datasets, zoom, args):
    """`--batch N`: every dataset through a LockstepEvaluator (one compilation per dataset)."""
    import jax

    from fcfi_jax.evaluation.lockstep import LockstepEvaluator

    results = []
    for ds in datasets:
        z = zoom_in_for(model.cfg.family, ds.name) if zoom == "official" else zoom
        ev = LockstepEvaluator(model, zoom_in=z, with_flip=not args.no_flip, batch=args.batch,
                               canvas_step=args.canvas_step or EVAL_CANVAS_STEP)
        idx = list(range(0, len(ds), args.every))[:args.limit]
        r = ev.evaluate(ds, args.n_clicks, idx)
        r["protocol"] = {"checkpoint": str(args.checkpoint), "zoom_in": z and list(z), "with_flip": not args.no_flip,
                         "n_clicks": args.n_clicks, "pred_thr": 0.49, "canvas_step": args.canvas_step or EVAL_CANVAS_STEP,
                         "compilations": ev.compile_count, "calls_on_a_larger_canvas": 0,
                         "batch": ev.batch, "devices": ev.mesh.devices.size, "net_per_sample": ev.net_per_sample}
        results.append(r)
        if r["n_samples"] and jax.process_index() == 0:
            print(f"{ds.name}: NoC@80 {r['NoC']['NoC@80']:.2f}  NoC@85 {r['NoC']['NoC@85']:.2f}  "
                  f"NoC@90 {r['NoC']['NoC@90']:.2f}  NoF@90 {r[f'>={args.n_clicks}']['@90']}  "
                  f"SPC {r['timing']['wall_seconds_per_click']:.2f}s  batch {ev.batch} on "
                  f"{ev.mesh.devices.size} device(s)  compilations {ev.compile_count}")
    return results


if __name__ == "__main__":
    sys.exit(main())
