"""Train and evaluate FCFI: `python -m fcfi_jax.main --config=configs/hrnet18s.py[:local] --workdir=DIR`.

Multi-host (TPU pod slice, several GPU machines): run the same command on every host. On Cloud TPU
`jax.distributed.initialize()` finds its peers by itself (--distributed); elsewhere pass
--coordinator_address=HOST:PORT --num_processes=N --process_id=I (fcfi_jax/distributed.py, shared with
`python -m fcfi_jax.evaluate --batch N`).
"""
import importlib
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from fcfi_jax import distributed

# TensorFlow (the input pipeline, imported in main()) logs C++ INFO and WARNING lines; it reads this once, at
# import. Set TF_CPP_MIN_LOG_LEVEL=0 to see them.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
TRAIN_EXTRA = ("tensorflow", "tensorflow_datasets", "clu", "tensorboard")   # the [train] extra's modules

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training config file (configs/*.py[:local]).", lock_config=True)
flags.DEFINE_string("workdir", None, "Checkpoints, TensorBoard logs and the final model go here "
                    "(default: runs/<config name>).")
flags.DEFINE_bool("distributed", False, distributed.HELP["distributed"])
flags.DEFINE_string("coordinator_address", None, distributed.HELP["coordinator_address"])
flags.DEFINE_integer("num_processes", None, distributed.HELP["num_processes"])
flags.DEFINE_integer("process_id", None, distributed.HELP["process_id"])
flags.mark_flags_as_required(["config"])


def _import_train_extra():
    """Import the [train] extra's modules up front: a missing one is then reported before any work starts. With
    TF_CPP_MIN_LOG_LEVEL >= 2, stderr (fd 2) goes to /dev/null meanwhile: TensorFlow 2.20+ logs a few INFO lines
    (oneDNN, CPU features) through absl before its logging is set up, where TF_CPP_MIN_LOG_LEVEL does not reach.
    An import failure is raised after stderr is back."""
    quiet = os.environ["TF_CPP_MIN_LOG_LEVEL"] not in ("0", "1")
    if quiet:
        sys.stderr.flush()
        saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
    try:
        for module in ("tensorflow", "tensorflow_datasets", "clu.metric_writers"):
            importlib.import_module(module)
    finally:
        if quiet:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS["verbosity"].present:  # progress goes to stdout; library INFO logs only with --verbosity=0
        logging.set_verbosity(logging.WARNING)
    import jax
    distributed.initialize(FLAGS.distributed, FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    try:
        _import_train_extra()
        from fcfi_jax.training.train import NonFiniteLossError, SetupError, train_and_evaluate
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in TRAIN_EXTRA:
            raise
        print(f"fcfi_jax.main: error: training needs the [train] extra ({e}): pip install '.[train]' in the "
              "repository (where TensorFlow is installed already: pip install tensorflow-datasets clu tensorboard)",
              file=sys.stderr)
        return 2

    workdir = FLAGS.workdir
    if workdir is None:
        name = os.path.splitext(os.path.basename(FLAGS["config"].config_filename))[0]
        arg = FLAGS["config"].config_filename.partition(":")[2] if ":" in FLAGS["config"].config_filename else ""
        workdir = os.path.join("runs", name + (f"_{arg}" if arg else ""))
    logging.info("JAX devices: %s (process %d of %d)", jax.devices(), jax.process_index(), jax.process_count())
    try:
        train_and_evaluate(FLAGS.config, workdir)
    except (SetupError, NonFiniteLossError) as e:
        print(f"fcfi_jax.main: error: {e}", file=sys.stderr)
        return 2
    return 0


def parse_flags(argv):
    """absl flag parsing, with config override mistakes (unknown key, wrong type) as one-line errors."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        print(f"fcfi_jax.main: error: {e}\nPass --help for usage.", file=sys.stderr)
        sys.exit(2)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        msg = str(e).replace("\\n", " ").replace("\\'", "").replace("'", "")
        print(f"fcfi_jax.main: error: bad --config override: {msg}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)), flags_parser=parse_flags)
