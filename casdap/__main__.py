import sys

from casdap.cli import main

sys.exit(main())
