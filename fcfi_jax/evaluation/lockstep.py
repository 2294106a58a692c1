"""NoC evaluation of N samples in lockstep on a `data` device mesh (`python -m fcfi_jax.evaluate --batch N`).

The official protocol (isegm/inference/evaluation.py evaluate_sample) always runs exactly n_clicks clicks per
sample with no early stop, so N samples can advance together: one compiled program does, for every sample of
the batch at once, the official next click (`device_clicker.next_click`) and the predictor step
(`click_step.click_step`), and returns the IoU counts. The batch axis is sharded over a 1-D
`jax.sharding.Mesh` of all devices named `data` (fcfi_jax/distributed.py; the weights are replicated), so the devices
each run their share of the samples. The session state stays on the device between clicks; the clicks, ROIs
and IoU counts of all n_clicks steps are fetched once per batch.

Several processes (multi-host, `jax.distributed`; `python -m fcfi_jax.evaluate --batch N --coordinator_address=...
--num_processes=... --process_id=...`, fcfi_jax/distributed.py): the mesh spans the devices of every process; each
process reads and uploads only the rows of the batch its own devices hold
(`jax.make_array_from_process_local_data`) and, in the first pass (shapes), every process_count-th sample; the
per-click records are replicated to every process once per batch (one small all-gather program), so every process
returns the whole results dict; the CLI writes the reports from process 0 only. With one process the arrays,
programs and results are those of a plain `jax.device_put` of the whole batch. Tested (tests/test_lockstep.py): a
batch of 3 on one device, a batch of 8 on 8 simulated CPU devices, and a batch of 8 on 2 processes of 4 simulated
CPU devices each (through the CLI, 2 clicks) give the same clicks, ROIs and IoUs (bit for bit: the network runs
per sample on the CPU, see `LockstepEvaluator`) as a batch of 1 on one device.

Images of different sizes share one image canvas (the largest of the dataset, rounded up to `canvas_step`)
with per-sample valid sizes; the network runs on one net canvas holding the image canvas and the zoom
target. The last batch is filled with copies of its first sample (their results are dropped), and the batch
is rounded up to a multiple of the device count. One compilation per dataset (canvas pair and batch).
"""
from __future__ import annotations

import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from fcfi_jax import ops
from fcfi_jax.distributed import data_mesh, data_shardings
from fcfi_jax.evaluation.device_clicker import clicker_inputs, next_click
from fcfi_jax.evaluation.metrics import _ratio, compute_noc_metrics
from fcfi_jax.inference.click_step import StepConfig, click_step, init_state, make_tables, model_net, step_canvases
from fcfi_jax.inference.defaults import EVAL_CANVAS_STEP, points_rows
from fcfi_jax.progress import Progress

__all__ = ["LockstepEvaluator"]


def one_sample_at_a_time(fn):
    """`fn` whose `jax.vmap` runs it on each sample in turn (`jax.lax.map` over the mapped arguments, the others
    shared), so that every sample goes through the program of an unbatched call."""
    mapped = jax.custom_batching.custom_vmap(fn)

    @mapped.def_vmap
    def _rule(axis_size, in_batched, *args):
        leaves, tree = jax.tree.flatten(args)
        flags = jax.tree.leaves(in_batched)
        assert len(flags) == len(leaves), (len(flags), len(leaves))

        def one(batched_leaves):
            it = iter(batched_leaves)
            return fn(*jax.tree.unflatten(tree, [next(it) if b else a for a, b in zip(leaves, flags)]))

        out = jax.lax.map(one, [a for a, b in zip(leaves, flags) if b])
        return out, jax.tree.map(lambda _: True, out)

    return mapped


class LockstepEvaluator:
    """Compiled lockstep click of one model; `evaluate(dataset, ...)` gives `evaluate_dataset`'s results dict.

    zoom_in: (target, expansion) or None; batch: samples per step (rounded up to a multiple of the devices);
    kernels: the `fcfi_jax.ops.Kernels` of the network (default `ops.for_backend(direct_conv=False)`).
    net_per_sample: run the network of each sample of a device's share on its own, one after another inside the
    step (`jax.lax.map`), instead of once on all of them (`jax.vmap`); default: on the CPU backend. XLA:CPU picks
    its convolution and matrix-product algorithms by shape, so the network of 8 samples (16 images with the flip)
    sums in another order than of one: logits differ by ~1e-5 and pixels near the threshold flip (IoU 4.1e-5 on
    one GrabCut image with hrnet18s_clicky.pth). Per sample, the network runs on exactly the shapes of --batch 1,
    so `--batch N` reproduces it bit for bit (tests/test_lockstep.py); on two CPU cores a batched network is no
    faster anyway. GPUs and TPUs keep the batched network, the point of lockstep there (their libraries, too,
    choose algorithms by shape).
    """

    def __init__(self, model, zoom_in=None, with_flip=True, batch=8, canvas_step=EVAL_CANVAS_STEP, mesh=None,
                 dtype=jnp.float32, prob_thresh=0.49, kernels=None, net_per_sample=None):
        from flax import nnx

        if int(batch) < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        self.mesh = mesh if mesh is not None else data_mesh()
        ndev = self.mesh.devices.size
        self.batch = -(-int(batch) // ndev) * ndev
        self.zoom_in = tuple(zoom_in) if zoom_in is not None else None
        self.with_flip = with_flip
        self.canvas_step = canvas_step or EVAL_CANVAS_STEP   # no exact-shape mode: one canvas per dataset
        self.dtype = dtype
        self.prob_thresh = prob_thresh
        self.ffcm_ratio = model.feature_extractor.correction_module.expan_ratio
        graphdef, state = nnx.split(model)
        self._net = model_net(graphdef, ops.for_backend(direct_conv=False) if kernels is None else kernels)
        self.net_per_sample = jax.default_backend() == "cpu" if net_per_sample is None else bool(net_per_sample)
        if self.net_per_sample:
            self._net = one_sample_at_a_time(self._net)
        self._rep, self._shard = data_shardings(self.mesh)
        self.params = self._replicate(state)
        # The batch rows that this process's devices hold (all of them with one process), in the order
        # make_array_from_process_local_data expects its local data: by the start of each device's slice.
        idx = self._shard.addressable_devices_indices_map((self.batch,))
        self.local_rows = sorted({r for (s,) in idx.values() for r in range(*s.indices(self.batch))})
        self._gather = None   # multi-process: replicates the records to every process
        self._fns = {}
        self.compile_count = 0
        self.stats = []   # per batch: first click (with compilation) and steady-state timings

    def _replicate(self, tree):
        """The same values on every device of the mesh (weights, tables)."""
        if jax.process_count() == 1:
            return jax.device_put(tree, self._rep)
        # Several processes hold the same values: each gives them for its own devices (device_put would reject
        # arrays committed to a device, and compare host arrays between the processes leaf by leaf).
        def put(a):
            if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):   # typed keys (nnx RNG state): their raw data
                return jax.random.wrap_key_data(put(jax.random.key_data(a)), impl=jax.random.key_impl(a))
            return jax.make_array_from_process_local_data(self._rep, np.asarray(a), np.shape(a))

        return jax.tree.map(put, tree)

    def _fn(self, cfg):
        """The jitted batched click for a step config (one per canvas pair)."""
        if cfg not in self._fns:
            net = self._net

            def one(params, tables, image, hw, state, obj, keep, pred, not_clicked):
                click, not_clicked = next_click(obj, keep, pred, not_clicked)
                state, _, mask = click_step(net, cfg, params, tables, image, hw, state, click)
                inter = jnp.sum(mask & obj & keep)
                union = jnp.sum((mask | obj) & keep)
                info = (click, jnp.stack([inter, union]), state.roi, state.has_roi, state.net_hw)
                return state, mask, not_clicked, info   # info: fresh arrays, the state is donated

            batched = jax.vmap(one, in_axes=(None, None, 0, 0, 0, 0, 0, 0, 0))
            # Samples are independent: each device runs the vmapped click on its own rows (shard_map), with no
            # communication and no partitioner choices (the CPU kernel, a custom call, would otherwise be
            # gathered onto every device). Explicit shardings: the outputs fed back next click keep exactly the
            # input sharding, so the second click does not compile again.
            rep, shd = self._rep, self._shard
            local = jax.shard_map(batched, mesh=self.mesh, in_specs=(rep.spec, rep.spec) + (shd.spec,) * 7,
                                  out_specs=shd.spec)
            self._fns[cfg] = jax.jit(local, in_shardings=(rep, rep) + (shd,) * 7, out_shardings=shd,
                                     donate_argnums=(4, 7, 8))
        return self._fns[cfg]

    @property
    def xla_compilations(self) -> int:
        return sum(f._cache_size() for f in self._fns.values())

    def config_for(self, shapes, n_clicks):
        image_canvas, net_canvas = step_canvases((max(s[0] for s in shapes), max(s[1] for s in shapes)),
                                                 self.canvas_step, self.zoom_in)
        slots = max(1, n_clicks)
        return StepConfig(image_canvas=image_canvas, net_canvas=net_canvas, zoom_in=self.zoom_in,
                          with_flip=self.with_flip, prob_thresh=self.prob_thresh, max_clicks=slots,
                          points_n=points_rows(slots))

    def run_batch(self, cfg, tables, samples, n_clicks):
        """samples: sequence of (image uint8 (H, W, 3), gt (H, W)) of length <= batch; returns per-sample
        (ious, clicks, per_click) as `evaluate_sample`. Only the rows of this process (`local_rows`) are read
        from `samples` (a lazy sequence reads only those); rows past the end are copies of the first sample."""
        hc, wc = cfg.image_canvas
        real = len(samples)
        rows = self.local_rows
        n = len(rows)
        dt = np.dtype(self.dtype)
        imgs = np.zeros((n, hc, wc, 3), dt)
        gts = np.zeros((n, hc, wc), np.int32)
        hws = np.zeros((n, 2), np.int32)
        read = {}
        for j, r in enumerate(rows):
            r = r if r < real else 0
            if r not in read:
                read[r] = samples[r]
            image, gt = read[r]
            h, w = gt.shape
            imgs[j, :h, :w] = image.astype(dt) / dt.type(255)   # torchvision ToTensor (in float64: as the host)
            gts[j, :h, :w] = gt
            hws[j] = h, w
        del read
        # one process: a device_put of the whole batch; several: each gives its rows of the global array
        put = lambda a: jax.make_array_from_process_local_data(self._shard, a, (self.batch,) + a.shape[1:])
        images, hw = put(imgs), put(hws)
        obj, keep = jax.jit(clicker_inputs, out_shardings=(self._shard, self._shard))(put(gts), hw)
        state = jax.tree.map(lambda a: put(np.broadcast_to(np.asarray(a), (n,) + a.shape).copy()),
                             init_state(cfg, self.dtype))
        pred = put(np.zeros((n, hc, wc), bool))
        not_clicked = put(np.ones((n, hc, wc), bool))
        fn = self._fn(cfg)
        before = fn._cache_size()
        records = []
        t0 = time.perf_counter()
        host = 0.0
        t_steady = t0
        for k in range(n_clicks):   # no device -> host transfer inside this loop
            t = time.perf_counter()
            state, pred, not_clicked, info = fn(self.params, tables, images, hw, state, obj, keep, pred, not_clicked)
            if k:
                host += time.perf_counter() - t   # Python + dispatch of an already compiled step
            records.append(info)
            if k == 0:   # a sync (no transfer) to time the first click (compilation) apart from the rest
                jax.block_until_ready(info)
                t_steady = time.perf_counter()
        records = jax.device_get(self._replicated(records))
        t_end = time.perf_counter()
        wall = (t_end - t0) / max(n_clicks, 1)
        self.stats.append({"samples": real, "batch": self.batch, "first_click_s": t_steady - t0,
                           "steady_clicks": max(n_clicks - 1, 0), "steady_s": t_end - t_steady, "host_s": host})
        self.compile_count += fn._cache_size() - before
        nb = 2 if self.with_flip else 1
        out = []
        for b in range(real):
            ious, clicks, per_click = [], [], []
            for click, counts, roi, has_roi, net_hw in records:
                ious.append(float(_ratio(counts[b, 0], counts[b, 1])))
                clicks.append([int(click[b, 0]), int(click[b, 1]), bool(click[b, 2])])
                per_click.append({"net_input_shape": [nb, int(net_hw[b, 0]), int(net_hw[b, 1]), 4],
                                  "zoom_roi_rmin_rmax_cmin_cmax": [int(v) for v in roi[b]] if has_roi[b] else None,
                                  "wall_s": wall})
            out.append((ious, clicks, per_click))
        return out

    def _replicated(self, records):
        """The records as arrays every process can read: themselves with one process; with several, one
        program per batch gathers them (a few ints per sample and click) onto every device."""
        if jax.process_count() == 1:
            return records
        if self._gather is None:
            self._gather = jax.jit(lambda r: r, out_shardings=self._rep)
        return self._gather(records)

    def evaluate(self, dataset, n_clicks=20, indices=None, progress=True):
        """The protocol over `dataset` in lockstep batches; the results dict of `evaluate_dataset`.

        With several processes every process returns the whole dict; only process 0 shows progress."""
        indices = list(range(len(dataset))) if indices is None else list(indices)
        t_start = time.perf_counter()
        # Two passes keep memory at one batch of samples: the first reads each sample once for its shape (the
        # shared canvas is sized from all of them) and reports unreadable ones; the second loads batch by batch.
        shapes, names = _scan(dataset, indices)
        kept = [i for i in indices if i in shapes]
        samples, all_ious = [], []
        if kept:
            cfg = self.config_for(list(shapes.values()), n_clicks)
            tables = self._replicate(make_tables(cfg, self.ffcm_ratio))
            # Counts against the readable samples: skipped ones never run, so they must not hold the ETA up.
            progress = progress and jax.process_index() == 0
            bar = Progress(len(kept), dataset.name, unit="images", quiet=not progress)
            for start in range(0, len(kept), self.batch):
                chunk = kept[start:start + self.batch]
                res = self.run_batch(cfg, tables, _Samples(dataset, chunk), n_clicks)
                for i, (ious, clicks, per_click) in zip(chunk, res):
                    all_ious.append(ious)
                    samples.append({"index": int(i), "image_name": names[i], "image_hw": list(shapes[i]),
                                    "iou": ious, "clicks": clicks, "per_click": per_click})
                if progress:
                    m = compute_noc_metrics(all_ious, max_clicks=n_clicks)
                    bar.update(done=len(samples), info=f"NoC@85 {m.noc[1]:.2f} NoC@90 {m.noc[2]:.2f}")
            bar.close()
        elapsed = time.perf_counter() - t_start
        metrics = compute_noc_metrics(all_ious, max_clicks=n_clicks) if all_ious else None
        n_total = n_clicks * len(samples)
        return {
            "dataset": dataset.name, "n_samples": len(samples), **(metrics.as_dict() if metrics else {}),
            "timing": {"wall_seconds": elapsed, "wall_seconds_per_click": elapsed / max(n_total, 1),
                       "model_seconds_per_click": elapsed / max(n_total, 1),
                       "note": f"lockstep batch {self.batch} on {self.mesh.devices.size} device(s)"
                               + (f" of {jax.process_count()} processes" if jax.process_count() > 1 else "")
                               + ": wall = whole "
                               "loop including compilation; the clicker, transforms and network run in one "
                               "device program, so model = wall"},
            "per_image": samples,
        }


def _scan(dataset, indices):
    """{index: gt shape}, {index: name} of the readable samples; unreadable ones (a corrupt image or mask) are
    reported on stderr and left out. With several processes each reads every process_count-th sample and the
    processes exchange what they found (one all-gather of a few bytes per sample), so the dataset is read once in
    all, not once per process."""
    count, rank = jax.process_count(), jax.process_index()
    found = []
    for i in indices[rank::count]:
        try:
            s = dataset[i]
            found.append((int(i), [int(v) for v in s.gt.shape], str(s.name)))
        except ValueError as e:   # corrupt image or mask: report it and evaluate the rest
            print(f"evaluate: skipping {dataset.name} sample {i}: {e}", file=sys.stderr)
    if count > 1:
        from jax.experimental import multihost_utils

        blob = np.frombuffer(json.dumps(found).encode(), np.uint8)
        sizes = multihost_utils.process_allgather(np.array([blob.size], np.int64))
        padded = np.zeros(int(np.max(sizes)), np.uint8)
        padded[:blob.size] = blob
        gathered = multihost_utils.process_allgather(padded)
        found = [row for part, n in zip(gathered, np.ravel(sizes)) for row in json.loads(part[:n].tobytes())]
    return ({i: tuple(shape) for i, shape, _ in found}, {i: name for i, _, name in found})


class _Samples:
    """(image, gt) of dataset[i] for i in `indices`, read when asked for (run_batch reads its process's rows)."""

    def __init__(self, dataset, indices):
        self.dataset, self.indices = dataset, list(indices)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, k):
        s = self.dataset[self.indices[k]]
        return s.image, s.gt
