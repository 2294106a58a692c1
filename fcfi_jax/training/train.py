"""The FCFI trainer: `train_and_evaluate(config, workdir)` (called by `python -m fcfi_jax.main`).

One jit-compiled step holds the whole iterative training of the official batch_forward
(docs/official_quirks.md #19): 0..max_num_next_clicks click-simulation forwards without gradients (eval-mode
network, soft-box FFCM path), each adding the next click where the error is largest (`clicks.next_points`, on
device), then the training forward, the official losses, the gradients and Adam with the official LR multipliers.
Data parallel (fcfi_jax/distributed.py): a Mesh with one 'data' axis over every device of every host, the batch
sharded along it, parameters / BatchNorm statistics / optimizer state replicated, so BatchNorm sees the global batch
(docs/official_quirks.md #42) and the same code runs on 1 CPU, 8 GPUs or a TPU pod slice.

Randomness is a pure function of (config.seed, step): the number of simulated clicks, the click picks and the
dropout masks use `fold_in(key, step)`, and the input stream is indexed by step, so a resumed run repeats
exactly what an uninterrupted one would have done.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx

from fcfi_jax import distributed, ops
from fcfi_jax.convert.torch_pickle import CheckpointError
from fcfi_jax.models.is_model import ISModel, ModelConfig, build_model
from fcfi_jax.progress import format_seconds
from fcfi_jax.training.clicks import first_new_points, next_points
from fcfi_jax.training.losses import FEEDBACK2_LOSSES, fcfi_loss
from fcfi_jax.training.optim import make_optimizer


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or inf; the message names the step and the loss terms."""


class SetupError(ValueError):
    """A problem the user can fix (config value, dataset folder, weights file); the message says how."""


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
    """Everything a step changes: plain nested dicts of arrays (what orbax saves)."""
    step: jax.Array
    params: dict
    batch_stats: dict
    opt_state: Any


class ModelParts:
    """A model split once into its graph (train- and eval-mode) and templates of its variables.

    `merge(params, batch_stats, train, dropout_key)` rebuilds a module from pure dicts inside traced code, with
    `kernels` (default: `ops.for_backend(direct_conv=False)`, the XLA:CPU forms on CPU, the reference on
    GPU/TPU; the direct CPU kernel has no gradient)."""

    def __init__(self, model: ISModel, kernels: ops.Kernels | None = None):
        self.kernels = ops.for_backend(direct_conv=False) if kernels is None else kernels
        model.train()
        self.train_def, params, stats, self.rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
        model.eval()
        self.eval_def = nnx.split(model, nnx.Param, nnx.BatchStat, ...)[0]
        self.params_tpl, self.stats_tpl = params, stats
        self.cfg = model.cfg

    def merge(self, params: dict, batch_stats: dict, train: bool, dropout_key=None) -> ISModel:
        p = jax.tree.map(lambda x: x, self.params_tpl)
        s = jax.tree.map(lambda x: x, self.stats_tpl)
        nnx.replace_by_pure_dict(p, params)
        nnx.replace_by_pure_dict(s, batch_stats)
        rest = jax.tree.map(lambda x: x, self.rest)
        model = ops.use_kernels(nnx.merge(self.train_def if train else self.eval_def, p, s, rest), self.kernels)
        if dropout_key is not None and jax.tree_util.tree_leaves(self.rest):
            nnx.reseed(model, default=dropout_key)
        return model

    def init_state(self, tx) -> TrainState:
        params = nnx.to_pure_dict(self.params_tpl)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          batch_stats=nnx.to_pure_dict(self.stats_tpl), opt_state=tx.init(params))


def make_train_step(parts: ModelParts, tx, schedule, *, max_num_next_clicks: int, feedback_weight: float,
                    seed: int, compute_dtype=jnp.float32, feedback2_loss: str = "official"):
    """The pure step function (state, batch) -> (state, metrics) (docs/official_quirks.md #19; jit it with shardings)."""
    base_key = jax.random.key(seed)

    def step_fn(state: TrainState, batch: dict):
        key = jax.random.fold_in(base_key, state.step)
        k_num, k_clicks, k_drop = jax.random.split(key, 3)
        images = batch["images"].astype(jnp.float32)          # (B, H, W, 3) in [0, 1]
        gt = batch["instances"].astype(jnp.float32)           # (B, H, W, 1)
        points = batch["points"].astype(jnp.float32)          # (B, 2N, 3)
        params, stats = state.params, state.batch_stats

        def forward(model, prev, pts, new_pts, gate):
            x = jnp.concatenate([images, prev], axis=-1).astype(compute_dtype)
            out = model(x, pts, new_pts, gate, soft_box=True)  # official is_training=True, in both modes
            return {k: v.astype(jnp.float32) for k, v in out.items()}

        # Click simulation: eval-mode network, no gradient, each prediction becomes the next prev mask.
        num_clicks = jax.random.randint(k_num, (), 0, max_num_next_clicks + 1)

        def simulate(k, carry):
            prev, pts, new_pts = carry
            model = parts.merge(params, stats, train=False)
            out = forward(model, prev, pts, new_pts, jnp.where(k == 0, 0.0, 1.0))
            prev = jax.nn.sigmoid(out["instances"])
            pts, new_pts = next_points(jax.random.fold_in(k_clicks, k), prev, gt, pts, k + 1)
            return prev, pts, new_pts

        carry = (jnp.zeros_like(gt), points, first_new_points(points))
        if max_num_next_clicks > 0:   # with 0 the loop never runs: left out of the graph, it is not compiled
            carry = jax.lax.fori_loop(0, num_clicks, simulate, carry)
        prev, points, new_points = jax.lax.stop_gradient(carry)
        gate = jnp.where(num_clicks >= 1, 1.0, 0.0)

        def loss_fn(p):
            model = parts.merge(p, stats, train=True, dropout_key=k_drop)
            out = forward(model, prev, points, new_points, gate)
            total, terms = fcfi_loss(out, gt, feedback_weight, feedback2=feedback2_loss)
            new_stats = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
            return total, (terms, out["instances"], new_stats)

        (loss, (terms, logits, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, state.opt_state, params)
        new_state = TrainState(step=state.step + 1, params=optax.apply_updates(params, updates),
                               batch_stats=new_stats, opt_state=opt_state)
        pred, obj = logits > 0, gt > 0.5
        iou = jnp.sum(pred & obj) / jnp.maximum(jnp.sum(pred | obj), 1)
        metrics = {"loss": loss, **{f"loss_{k}": v for k, v in terms.items()}, "train_iou": iou,
                   "num_sim_clicks": num_clicks.astype(jnp.float32), "lr": schedule(state.step),
                   "grad_norm": optax.global_norm(grads)}
        return new_state, metrics

    return step_fn


# ----------------------------------------------------------------------------------------------- set-up


def model_from_config(config) -> ISModel:
    """The model to train: built from config.model, or, when config.init_from is a whole FCFI checkpoint (an
    official .pth with its 'config', or a converted directory), that model with its own architecture, so that
    fine-tuning starts from the released weights. ImageNet files fill the backbone only."""
    from fcfi_jax.training.pretrained import load_init
    cfg = ModelConfig.from_dict(dict(config.model))
    if not config.get("init_from"):
        return build_model(cfg, seed=config.seed)
    model, report = load_init(lambda: build_model(cfg, seed=config.seed), config.init_from, config.init_format,
                              seed=config.seed)
    if report["format"] == "fcfi":
        print(f"initialised the whole model from {config.init_from} ({report['loaded']} tensors)", flush=True)
        if model.cfg != cfg:
            differ = ", ".join(f"{k}={v!r}" for k, v in model.cfg.to_dict().items() if cfg.to_dict().get(k) != v)
            print(f"  architecture from the checkpoint, not config.model: {differ}", flush=True)
    else:
        print(f"initialised the backbone from {config.init_from}: {report}", flush=True)
    return model


def data_source(config) -> str:
    """'synthetic' or 'tfds'. 'auto' (the :local recipes): the dataset folder when one is given
    (data.manual_dir or data.tfds_dir), else generated data, so `:local --config.data.builder=folder
    --config.data.manual_dir=DIR` trains the small recipe on your images."""
    d = config.data
    if d.source == "auto":
        return "tfds" if (d.manual_dir or d.tfds_dir) else "synthetic"
    return d.source


def own_heldout_eval(config) -> bool:
    """Evaluation on the held-out split of the training folder (own data, no eval.root given)."""
    from fcfi_jax.data.tfds_builders import OWN_DATA_BUILDERS
    return data_source(config) == "tfds" and config.data.builder in OWN_DATA_BUILDERS and not config.eval.root


def validate_config(config) -> None:
    """Fail fast, with the fix, on values the trainer cannot run with."""
    errors = []
    try:
        distributed.per_process_batch(config.batch_size, device_count=jax.device_count())
    except ValueError as e:
        errors.append(str(e))
    if not (isinstance(config.max_num_next_clicks, int) and 0 <= config.max_num_next_clicks <= config.data.num_points):
        errors.append(f"max_num_next_clicks={config.max_num_next_clicks} must be an int in [0, "
                      f"data.num_points={config.data.num_points}]")
    if len(config.data.crop_size) != 2 or min(config.data.crop_size) < 32:
        errors.append(f"data.crop_size={tuple(config.data.crop_size)} must be (H, W) with both >= 32")
    if not config.lr > 0:
        errors.append(f"lr={config.lr} must be > 0")
    # 0 means "all" elsewhere, but orbax's max_to_keep=0 deletes every checkpoint of the run: refuse it.
    if not (isinstance(config.keep_checkpoints, int) and config.keep_checkpoints >= 1):
        errors.append(f"keep_checkpoints={config.keep_checkpoints} must be an int >= 1 (the checkpoints kept)")
    if not (isinstance(config.log_every, int) and config.log_every >= 1):
        errors.append(f"log_every={config.log_every} must be an int >= 1 (steps between log lines)")
    if config.checkpoint_every_steps < 0 or (config.checkpoint_every_steps == 0
                                             and not config.checkpoint_every_epochs > 0):
        errors.append("set checkpoint_every_steps > 0 or checkpoint_every_epochs > 0")
    if config.loss.feedback2 not in FEEDBACK2_LOSSES:
        errors.append(f"loss.feedback2={config.loss.feedback2!r} must be one of {', '.join(FEEDBACK2_LOSSES)} "
                      "(official: the released objective; corrected: BCE on the feedback-2 probability)")
    if config.compute_dtype not in ("float32", "bfloat16"):
        errors.append(f"compute_dtype={config.compute_dtype!r} must be 'float32' or 'bfloat16'")
    if config.num_epochs <= 0 and config.get("total_steps", 0) <= 0:
        errors.append("set num_epochs > 0 or total_steps > 0")
    if config.data.source not in ("synthetic", "tfds", "auto"):
        errors.append(f"data.source={config.data.source!r} must be 'synthetic', 'tfds' or 'auto'")
    if config.data.source == "tfds" and not (config.data.manual_dir or config.data.tfds_dir):
        errors.append("data.source='tfds' needs data.manual_dir (the official dataset folder) or data.tfds_dir "
                      "(an already prepared TFDS directory); see README 'Training'")
    from fcfi_jax.data.tfds_builders import BUILDERS
    if data_source(config) == "tfds" and not config.data.tfds_dir and (
            config.data.builder not in BUILDERS or config.data.builder == "interactive_eval"):
        known = ", ".join(b for b in BUILDERS if b != "interactive_eval")
        errors.append(f"data.builder={config.data.builder!r} must be one of {known} (folder / coco_json: your "
                      f"own images, docs/training.md 'Train on your own images')")
    if not 0 <= config.data.val_fraction < 1:
        errors.append(f"data.val_fraction={config.data.val_fraction} must be in [0, 1) (share of your images held "
                      "out for evaluation)")
    try:
        ModelConfig.from_dict(dict(config.model))
    except (TypeError, ValueError) as e:
        errors.append(f"model: {e}")
    if errors:
        raise SetupError("invalid config:\n  " + "\n  ".join(errors))


def prepare_data(config, workdir: Path):
    """The training tf.data builder for this config (synthetic data is generated into workdir once)."""
    import tensorflow_datasets as tfds

    from fcfi_jax.data import tfds_builders
    tfds.disable_progress_bar()
    d = config.data
    tfds_dir = Path(d.tfds_data_dir or workdir / "tfds")
    if data_source(config) == "synthetic":
        from fcfi_jax.data.synthetic import prepare_synthetic_sbd
        root = Path(d.synthetic_root or workdir / "synthetic_sbd")
        builder = prepare_synthetic_sbd(root, tfds_dir, num_train=d.synthetic_train, num_val=d.synthetic_val,
                                        image_size=tuple(d.synthetic_size), seed=d.synthetic_seed)
        return builder, root
    if d.tfds_dir:
        return tfds_builders.load_builder(d.tfds_dir), None
    kwargs = {"val_fraction": d.val_fraction} if d.builder in tfds_builders.OWN_DATA_BUILDERS else {}
    builder = tfds_builders.prepare_builder(d.builder, d.manual_dir, tfds_dir, **kwargs)
    return builder, Path(d.manual_dir)


class Evaluator:
    """Periodic NoC evaluation through the evaluation code (host-side predictor, exact protocol)."""

    def __init__(self, config, parts: ModelParts, synthetic_root, builder=None):
        from fcfi_jax.data.readers import get_dataset
        from fcfi_jax.inference.predictor import Predictor
        from fcfi_jax.inference.runner import CanvasRunner
        e = config.eval
        if own_heldout_eval(config) and builder is not None:
            from fcfi_jax.data.own_data import heldout_eval_dataset
            self.dataset = heldout_eval_dataset(builder, "val")
        else:
            root = e.root or synthetic_root
            if root is None:
                raise SetupError("eval.root is empty: set it to the evaluation dataset folder, or eval.every_steps=0")
            kwargs = {"split": e.split} if e.dataset.lower() in ("sbd", "pascalvoc") else {}
            self.dataset = get_dataset(e.dataset, root, **kwargs)
        self.indices = list(range(min(len(self.dataset), e.max_samples or len(self.dataset))))
        self.parts, self.n_clicks = parts, e.n_clicks
        model = parts.merge(nnx.to_pure_dict(parts.params_tpl), nnx.to_pure_dict(parts.stats_tpl), train=False)
        self.runner = CanvasRunner(model, step=e.canvas_step or None)
        zoom = (int(e.zoom_in[0]), float(e.zoom_in[1])) if e.zoom_in and e.zoom_in[0] > 0 else None
        self.predictor = Predictor(self.runner, zoom_in=zoom, with_flip=e.with_flip)

    def __call__(self, state: TrainState) -> dict:
        from fcfi_jax.evaluation.evaluate import evaluate_dataset
        params, stats = jax.device_get((state.params, state.batch_stats))  # replicated -> host copy
        model = self.parts.merge(params, stats, train=False)
        self.runner.state = nnx.state(model)
        res = evaluate_dataset(self.predictor, self.dataset, self.n_clicks, self.indices, progress=False)
        miou = res["mIoU_per_click"]
        return {"noc85": res["NoC"]["NoC@85"], "noc90": res["NoC"]["NoC@90"], "miou_1": miou[0],
                "miou_5": miou[min(4, len(miou) - 1)], "eval_samples": len(self.indices)}


def _abstract(tree, sharding):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


# ----------------------------------------------------------------------------------------------- loop


def train_and_evaluate(config, workdir) -> dict:
    """Train (resuming from workdir/checkpoints if present), evaluate periodically, export the final model.

    Returns the last metrics (and evaluation results) as floats."""
    import orbax.checkpoint as ocp
    from clu import metric_writers, parameter_overview

    from fcfi_jax.data.pipeline import make_train_dataset
    from fcfi_jax.inference.runner import enable_compilation_cache

    validate_config(config)
    workdir = Path(workdir).absolute()
    if workdir.exists() and not workdir.is_dir():
        raise SetupError(f"workdir {workdir} is a file; give a folder (created if missing)")
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SetupError(f"cannot create workdir {workdir}: {e.strerror or e}") from None
    if config.get("compilation_cache", True):
        enable_compilation_cache()
    is_main = jax.process_index() == 0
    writer = metric_writers.create_default_writer(str(workdir / "tensorboard"), just_logging=not is_main)

    try:
        model = model_from_config(config)
        builder, data_root = prepare_data(config, workdir)
    except (ValueError, OSError, CheckpointError, ImportError) as e:
        raise SetupError(str(e)) from e
    parts = ModelParts(model)
    _, info = make_train_dataset(builder, config.data.split, tuple(config.data.crop_size), config.batch_size,
                                 seed=config.seed, num_points=config.data.num_points,
                                 epoch_len=config.data.epoch_len or None, return_info=True)
    steps_per_epoch = info["steps_per_epoch"]
    total_steps = config.get("total_steps") or config.num_epochs * steps_per_epoch
    tx, schedule = make_optimizer(nnx.to_pure_dict(parts.params_tpl), parts.cfg.family, config.lr, steps_per_epoch,
                                  config.lr_milestones, config.lr_gamma, config.backbone_lr_mult)

    replicated, batch_sharding = distributed.data_shardings()
    state = jax.device_put(parts.init_state(tx), replicated)
    ckpt_every = config.checkpoint_every_steps or steps_per_epoch * config.checkpoint_every_epochs
    manager = ocp.CheckpointManager(workdir / "checkpoints", options=ocp.CheckpointManagerOptions(
        max_to_keep=config.keep_checkpoints, create=True))
    start = manager.latest_step()
    if start is not None:
        try:
            state = manager.restore(start, args=ocp.args.StandardRestore(_abstract(state, replicated)))
        except Exception as e:   # orbax raises long chained tracebacks: name the step and the way out
            steps = [s for s in manager.all_steps() if s != start]
            way = (f"move {workdir / 'checkpoints' / str(start)} aside to resume from step {max(steps)}"
                   if steps else f"move {workdir / 'checkpoints'} aside to start again")
            first = (str(e).strip().splitlines() or [""])[0][:160]
            raise SetupError(f"the latest checkpoint (step {start}) in {workdir / 'checkpoints'} cannot be restored "
                             f"({type(e).__name__}: {first}); {way}") from None
        logging.info("resumed from %s at step %d", workdir / "checkpoints", start)
        print(f"resumed from step {start} ({workdir / 'checkpoints'})", flush=True)
    start = int(start or 0)
    if is_main:
        overview = parameter_overview.get_parameter_overview(state.params)
        (workdir / "parameters.txt").write_text(overview + "\n")
        print(f"{overview.splitlines()[-1]} (per parameter: {workdir / 'parameters.txt'})", flush=True)
        writer.write_hparams({k: v for k, v in config.to_dict().items() if isinstance(v, (int, float, str, bool))})

    ds = make_train_dataset(builder, config.data.split, tuple(config.data.crop_size), config.batch_size,
                            seed=config.seed, num_points=config.data.num_points,
                            epoch_len=config.data.epoch_len or None, start_step=start)
    batches = ds.as_numpy_iterator()
    dtype = jnp.bfloat16 if config.compute_dtype == "bfloat16" else jnp.float32
    step_fn = make_train_step(parts, tx, schedule, max_num_next_clicks=config.max_num_next_clicks,
                              feedback_weight=config.feedback_weight, seed=config.seed, compute_dtype=dtype,
                              feedback2_loss=config.loss.feedback2)
    train_step = jax.jit(step_fn, in_shardings=(replicated, batch_sharding), out_shardings=(replicated, replicated),
                         donate_argnums=(0,))
    evaluator = None
    if config.eval.every_steps or config.eval.at_start or config.eval.at_end:
        try:
            evaluator = Evaluator(config, parts, data_root if data_source(config) == "synthetic" else None, builder)
        except (ValueError, OSError) as e:
            raise SetupError(f"evaluation set-up: {e}") from e

    results: dict = {"workdir": str(workdir), "steps_per_epoch": steps_per_epoch, "total_steps": total_steps}

    def run_eval(step, tag):
        t0 = time.perf_counter()
        m = evaluator(state)
        m["eval_seconds"] = time.perf_counter() - t0
        writer.write_scalars(step, {f"eval/{k}": v for k, v in m.items()})
        print(f"eval @ step {step} ({tag}): NoC@85 {m['noc85']:.2f}  NoC@90 {m['noc90']:.2f}  "
              f"mIoU@1 {m['miou_1']:.3f}  ({m['eval_samples']} samples, {m['eval_seconds']:.0f}s)", flush=True)
        results[f"eval_{tag}"] = m

    if evaluator is not None and config.eval.at_start and start == 0:
        run_eval(0, "start")

    pending, wait_s, t_window, n_window = [], 0.0, time.perf_counter(), 0
    step = start
    print(f"training {total_steps} steps ({steps_per_epoch} per epoch) from step {start}, global batch "
          f"{config.batch_size} on {jax.device_count()} device(s), {jax.process_count()} process(es); "
          f"workdir {workdir}", flush=True)
    while step < total_steps:
        t0 = time.perf_counter()
        batch = next(batches)
        batch = distributed.to_global_batch(batch, batch_sharding)
        wait_s += time.perf_counter() - t0
        state, metrics = train_step(state, batch)
        step += 1
        n_window += 1
        pending.append((step, metrics))
        last = step == total_steps
        if step % config.log_every == 0 or last:
            fetched = jax.device_get(pending)  # one host sync per logging window
            for s, m in fetched:
                if not np.isfinite(m["loss"]):
                    terms = ", ".join(f"{k}={float(v):.6g}" for k, v in m.items() if k.startswith("loss"))
                    raise NonFiniteLossError(f"non-finite loss at step {s}: {terms}; the last good checkpoint is "
                                             f"step {manager.latest_step()} in {workdir / 'checkpoints'}")
            elapsed = time.perf_counter() - t_window
            mean = {k: float(np.mean([m[k] for _, m in fetched])) for k in fetched[-1][1]}
            mean["samples_per_second"] = n_window * config.batch_size / elapsed
            mean["input_wait_fraction"] = wait_s / elapsed
            writer.write_scalars(step, mean)
            # From this window's step time, not the run's average: the first window holds the compilation, and input
            # speed drifts over a long run. Evaluations and checkpoints in between are not counted.
            eta_s = (total_steps - step) * elapsed / n_window
            if is_main:
                with open(workdir / "metrics.jsonl", "a") as f:
                    f.write(json.dumps({"step": step, **mean}) + "\n")
            print(f"step {step}/{total_steps}  loss {mean['loss']:.4f} (inst {mean['loss_instance']:.4f} "
                  f"fb1 {mean['loss_feedback1']:.4f} fb2 {mean['loss_feedback2']:.4f})  train IoU "
                  f"{mean['train_iou']:.3f}  lr {mean['lr']:.2e}  {mean['samples_per_second']:.1f} samples/s  "
                  f"input wait {100 * mean['input_wait_fraction']:.0f}%  ETA {format_seconds(eta_s)}", flush=True)
            results["train"] = mean
            pending, wait_s, t_window, n_window = [], 0.0, time.perf_counter(), 0
        if step % ckpt_every == 0 or last:
            manager.save(step, args=ocp.args.StandardSave(state))
        if evaluator is not None and config.eval.every_steps and step % config.eval.every_steps == 0 and not last:
            run_eval(step, f"step{step}")
    manager.wait_until_finished()
    if evaluator is not None and config.eval.at_end:
        run_eval(step, "end")
    export = export_model(parts, state, workdir / "model")  # all processes (orbax synchronises them)
    results["model"] = str(export)
    if is_main:
        (workdir / "results.json").write_text(json.dumps(results, indent=1, default=float))
        print(f"checkpoints: {workdir / 'checkpoints'}\nTensorBoard logs: {workdir / 'tensorboard'}\n"
              f"final model (for fcfi_jax.evaluate / predict / demo): {export}\nsummary: {workdir / 'results.json'}",
              flush=True)
    writer.flush()
    return results


def export_model(parts: ModelParts, state: TrainState, out_dir) -> Path:
    """Write the trained model as a converted-checkpoint directory (`fcfi_jax.load_model(out_dir)`)."""
    from fcfi_jax.convert.checkpoint import save_converted
    params, stats = jax.device_get((state.params, state.batch_stats))
    model = parts.merge(params, stats, train=False)
    save_converted(model, out_dir)
    return Path(out_dir)
