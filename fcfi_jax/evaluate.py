"""`python -m fcfi_jax.evaluate ...`: see fcfi_jax/evaluation/evaluate.py."""
import sys

from fcfi_jax.evaluation.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
