"""`python -m fcfi_jax.demo --checkpoint CKPT [--port 7860] [--host 127.0.0.1]`: see fcfi_jax/demo/server.py."""
import sys

from fcfi_jax.demo.server import main

if __name__ == "__main__":
    sys.exit(main())
