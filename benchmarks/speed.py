"""Speed benchmark of the CAS-ViT backbones; the same as ``casdap bench`` (see ``--help``).

    python benchmarks/speed.py --models rcvit_xs --sizes 32,224 --reference /path/to/rcvit.py
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from casdap.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
