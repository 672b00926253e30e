"""python -m bench [--tiny] [chunker|engine|service|soak|gateway|all] (see bench/run.py)."""

import sys

from .run import main

sys.exit(main())
