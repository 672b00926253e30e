"""python -m workers.sink: the sink process (see workers/sink/process.py)."""

import sys

from .process import main

sys.exit(main())
