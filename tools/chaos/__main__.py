"""``python -m tools.chaos``: see :mod:`tools.chaos`."""

import sys

from tools.chaos.cli import main

sys.exit(main())
