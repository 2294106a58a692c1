"""Convert an official FCFI PyTorch checkpoint to an fcfi_jax (orbax) checkpoint directory.

    python tools/convert.py --checkpoint hrnet18s_cocolvis.pth --output converted/hrnet18s

Reads the `.pth` without PyTorch and without running pickled code, builds the architecture
recorded in the checkpoint's `config` (validated first: types, ranges, depth), and fills every
parameter strictly (every official key used, every Flax variable filled, shapes checked). Load
the result with `fcfi_jax.load_model("converted/hrnet18s")`.

The output is written atomically: into a temporary sibling directory that is renamed to --output
at the end. A failure (or Ctrl+C) leaves nothing behind, and an existing converted directory at
--output is replaced only once the new one is complete. An existing --output that is not a
converted directory (a file, or a folder without model_config.json) is refused, never deleted.
Errors are one `convert: error: ...` line and exit code 2.

For checkpoints of 16 MiB or more (or with --progress) it reports each phase on stderr: tensors read with an ETA,
then how long mapping and writing took. The JSON report on stdout is unchanged.
"""
import argparse
import json
import os
import pathlib
import shutil
import sys
import tempfile
import time

PROGRESS_MIN_BYTES = 16 << 20   # below this a conversion takes a few seconds: phase lines would only be noise


def _prepare_output(out: pathlib.Path) -> pathlib.Path:
    """Check --output before converting; return a fresh temporary sibling directory to write into."""
    from fcfi_jax.convert.checkpoint import CONFIG_FILE

    if out.exists() and not out.is_dir():
        raise OSError(f"--output {out} is a file; give a directory path (it is created)")
    if out.is_dir() and any(out.iterdir()) and not (out / CONFIG_FILE).is_file():
        raise OSError(f"--output {out} is a non-empty folder that is not a converted checkpoint (no {CONFIG_FILE}); "
                      "choose a new directory (it is never deleted)")
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        return pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
    except OSError as e:
        raise OSError(f"cannot create the output directory next to {out}: {e.strerror or e}") from None


def _publish(tmp: pathlib.Path, out: pathlib.Path):
    """Rename the finished temporary directory to `out`, replacing an old converted directory only now."""
    old = None
    if out.exists():
        old = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.rename(out, old / "d")   # rename, not delete: restored below if the second rename fails
    try:
        os.rename(tmp, out)
    except OSError:
        if old is not None:
            os.rename(old / "d", out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="official .pth (torch.save of {'state_dict', 'config'})")
    parser.add_argument("--output", required=True,
                        help="directory to write (created; an existing converted directory is replaced)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help=f"report the phases on stderr (default: for checkpoints of {PROGRESS_MIN_BYTES >> 20} MiB "
                             "or more)")
    args = parser.parse_args(argv)
    bar = None

    def fail(msg):
        if bar is not None:
            bar.close()   # ends a half-drawn terminal line, so the error starts on its own
        print(f"convert: error: {msg}", file=sys.stderr)
        return 2

    from fcfi_jax.convert.checkpoint import convert_official, save_converted
    from fcfi_jax.convert.mapping import ConversionError
    from fcfi_jax.convert.torch_pickle import CheckpointError
    from fcfi_jax.progress import Progress, format_seconds

    t0 = time.time()
    out = pathlib.Path(args.output).absolute()
    if not os.path.isfile(args.checkpoint):
        return fail(f"checkpoint not found: {args.checkpoint}")
    show = args.progress if args.progress is not None else os.path.getsize(args.checkpoint) >= PROGRESS_MIN_BYTES
    name = os.path.basename(args.checkpoint)
    t_phase = time.perf_counter()

    def say(msg):
        if show:
            print(msg, file=sys.stderr, flush=True)

    def on_read(done, total):
        nonlocal bar, t_phase
        if bar is None:
            bar = Progress(total, f"reading {name}", unit="tensors", quiet=not show)
        bar.update(done=done)
        if done == total:   # the rest of convert_official: validate the config, build the model, fill it
            bar.close()
            t_phase = time.perf_counter()
            say("mapping onto the fcfi_jax model ...")

    try:
        tmp = _prepare_output(out)
    except OSError as e:
        return fail(e)
    try:
        model, report = convert_official(args.checkpoint, progress=on_read)
        if bar is not None:
            bar.close()   # no-op unless the archive held records the pickle never used
        say(f"mapped in {format_seconds(time.perf_counter() - t_phase)}; writing {out} ...")
        t_phase = time.perf_counter()
        save_converted(model, tmp, extra={"conversion": report})
        _publish(tmp, out)
        say(f"written in {format_seconds(time.perf_counter() - t_phase)}")
    except (CheckpointError, ConversionError) as e:
        return fail(e)
    except OSError as e:
        return fail(f"cannot write {out}: {e.strerror or e}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)   # gone already after a successful rename
    print(json.dumps({"output": str(out), "model_config": model.cfg.to_dict(), **report,
                      "seconds": round(time.time() - t0, 1)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
