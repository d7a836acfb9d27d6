"""What every benchmark script shares.

A script run by path (``python benchmarks/perf/run.py``) starts with only its own folder on ``sys.path``. Its
one preamble line puts the repository root there, before anything else is imported::

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run by path: the repository root is importable

so that ``benchmarks``, ``dive`` and ``pipeline`` resolve to this checkout whichever way the script starts (the
line cannot live here: this module is only importable once it has run). Imported as a module (the tests,
``python -m benchmarks.perf.run``), the root is on ``sys.path`` already and the line changes nothing that matters.
"""

from __future__ import annotations

from pathlib import Path

# The repository root: where tune_configs/, .cache/ and outputs/ are, whichever folder a script runs from.
ROOT = Path(__file__).resolve().parents[1]
