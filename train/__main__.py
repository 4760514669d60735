"""``python -m zoo.train`` (and ``torchrun --nproc_per_node=N -m zoo.train``) is ``zoo train``."""

import sys

from zoo.errors import ZooError

from .cli import main

if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except ZooError as e:
        print(f"train: error: {e}", file=sys.stderr)
        sys.exit(1)
