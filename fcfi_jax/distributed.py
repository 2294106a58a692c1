"""Multi-process (multi-host) start-up shared by `python -m fcfi_jax.main` and `python -m fcfi_jax.evaluate`.

Run the same command on every host. On Cloud TPU `jax.distributed.initialize()` finds its peers by itself
(--distributed); elsewhere pass --coordinator_address=HOST:PORT --num_processes=N --process_id=I. CPU processes
(tests: several processes with simulated devices on one machine) exchange data over gloo.
"""
from __future__ import annotations

__all__ = ["add_distributed_args", "initialize", "wants_distributed"]

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
