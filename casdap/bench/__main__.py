"""``python -m casdap.bench`` is ``casdap bench``."""

import sys

from casdap.cli import main

sys.exit(main(["bench", *sys.argv[1:]]))
