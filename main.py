"""CAS-ViT style entry point: ``python main.py --model rcvit_xs ...`` (also under torchrun).

Hands over to the package; see ``casdap --help``.
"""

import sys

from casdap.cli import seed_main

if __name__ == "__main__":
    sys.exit(seed_main())
