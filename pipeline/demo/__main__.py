"""``python -m pipeline.demo [root] [seed] [size]``: build the demo data and its teacher (both cached)."""

import sys
from pathlib import Path

from pipeline.demo import ensure_demo

args = sys.argv[1:]
ensure_demo(Path(args[0] if args else "outputs/demo"), int(args[1]) if len(args) > 1 else 0, *args[2:3])
