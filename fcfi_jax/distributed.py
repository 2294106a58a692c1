"""Multi-process (multi-host) start-up and the data-parallel layout shared by training and evaluation.

Start-up (`python -m fcfi_jax.main`, `python -m fcfi_jax.evaluate`): run the same command on every host. On Cloud
TPU `jax.distributed.initialize()` finds its peers by itself (--distributed); elsewhere pass
--coordinator_address=HOST:PORT --num_processes=N --process_id=I. CPU processes (tests: several processes with
simulated devices on one machine) exchange data over gloo.

Layout (the trainer, its input pipeline, the lockstep evaluation): a 1-D mesh named `data` over every device of
every process (`data_mesh`); batches are split along it and weights replicated (`data_shardings`); a global batch
is split evenly between the processes, each loading its own rows (`per_process_batch`) and handing them over with
`to_global_batch`. JAX is imported only when these are called, so the CLIs parse their flags without it.
"""
from __future__ import annotations

__all__ = ["add_distributed_args", "initialize", "wants_distributed", "DATA_AXIS", "data_mesh", "data_shardings",
           "per_process_batch", "to_global_batch"]

DATA_AXIS = "data"   # the one mesh axis: the batch is split along it

HELP = {
    "distributed": "Call jax.distributed.initialize() (multi-host; automatic on Cloud TPU).",
    "coordinator_address": "HOST:PORT of process 0 (multi-host without auto-detection).",
    "num_processes": "Number of processes (multi-host).",
    "process_id": "This process's index (multi-host).",
}


def add_distributed_args(parser):
    """The four flags on an argparse parser, spelt as main's absl flags (a dash for the underscore works too)."""
    parser.add_argument("--distributed", action="store_true", help=HELP["distributed"])
    parser.add_argument("--coordinator_address", "--coordinator-address", default=None, metavar="HOST:PORT",
                        help=HELP["coordinator_address"])
    parser.add_argument("--num_processes", "--num-processes", type=int, default=None, help=HELP["num_processes"])
    parser.add_argument("--process_id", "--process-id", type=int, default=None, help=HELP["process_id"])


def wants_distributed(distributed=False, coordinator_address=None) -> bool:
    return bool(distributed or coordinator_address)


def initialize(distributed=False, coordinator_address=None, num_processes=None, process_id=None) -> bool:
    """jax.distributed.initialize() when asked for (--distributed or a coordinator address); True if it ran.

    Call it before anything else touches a JAX backend."""
    if not wants_distributed(distributed, coordinator_address):
        return False
    import jax

    if jax.config.jax_platforms in (None, "", "cpu") and coordinator_address:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
    return True


def data_mesh(devices=None):
    """1-D mesh named `data` over `devices` (default: all devices of all processes)."""
    import jax
    import numpy as np
    from jax.sharding import Mesh

    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def data_shardings(mesh=None):
    """(replicated, batch): NamedShardings on `mesh` (default `data_mesh()`) holding a value whole on every device,
    and splitting the leading (batch) axis over the `data` axis."""
    from jax.sharding import NamedSharding, PartitionSpec

    mesh = data_mesh() if mesh is None else mesh
    return NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def per_process_batch(batch_size: int, process_count: int | None = None, device_count: int | None = None) -> int:
    """The rows of a global batch each process loads: batch_size / process_count (default: jax's).

    ValueError, one line, when it does not split: by the processes, or, with device_count given, when batch_size
    is not a positive multiple of the devices (a batch sharded over `data` needs an equal share per device)."""
    import jax

    if device_count is not None and (batch_size <= 0 or batch_size % device_count):
        raise ValueError(f"batch_size={batch_size} must be a positive multiple of the {device_count} devices")
    process_count = jax.process_count() if process_count is None else int(process_count)
    if batch_size % process_count:
        raise ValueError(f"global batch_size {batch_size} is not divisible by {process_count} processes")
    return batch_size // process_count


def to_global_batch(batch: dict, sharding=None) -> dict:
    """This process's rows (numpy, `per_process_batch` of them) -> global jax.Arrays split over `data`
    (jax.make_array_from_process_local_data per entry; sharding default: the batch one of `data_shardings()`)."""
    import jax
    import numpy as np

    sharding = data_shardings()[1] if sharding is None else sharding
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}
