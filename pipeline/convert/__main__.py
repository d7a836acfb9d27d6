"""``python -m pipeline.convert …`` = ``dive data …``."""

import sys

from pipeline.convert.cli import main

sys.exit(main())
