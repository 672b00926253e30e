#!/usr/bin/env python3
"""Write a synthetic XTTS-v2 checkpoint: `scripts/make_synthetic_xtts.py [--size tiny|full] [--seed N] DIR`.

The same as `xtts-stream make-synthetic`; the logic lives in workers/engines/synthetic.py.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from workers.engines.synthetic import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
