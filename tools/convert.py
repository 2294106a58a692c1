"""Convert an official FCFI PyTorch checkpoint to an fcfi_jax (orbax) checkpoint directory.

    python tools/convert.py --checkpoint hrnet18s_cocolvis.pth --output converted/hrnet18s

Reads the `.pth` without PyTorch and without running pickled code, builds the architecture
recorded in the checkpoint's `config`, and fills every parameter strictly (every official key
used, every Flax variable filled, shapes checked). Load the result with
`fcfi_jax.load_model("converted/hrnet18s")`.
"""
import argparse
import json
import sys
import time


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="official .pth (torch.save of {'state_dict', 'config'})")
    parser.add_argument("--output", required=True, help="directory to write (created; overwritten if it exists)")
    args = parser.parse_args(argv)

    from fcfi_jax.convert.checkpoint import convert_official, save_converted
    from fcfi_jax.convert.mapping import ConversionError
    from fcfi_jax.convert.torch_pickle import CheckpointError

    t0 = time.time()
    try:
        model, report = convert_official(args.checkpoint)
    except (CheckpointError, ConversionError) as e:
        print(f"convert: error: {e}", file=sys.stderr)
        return 1
    out = save_converted(model, args.output, extra={"conversion": report})
    print(json.dumps({"output": str(out), "model_config": model.cfg.to_dict(), **report,
                      "seconds": round(time.time() - t0, 1)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
