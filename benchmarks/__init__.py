"""Benchmarks of the pipeline: scripts run by path (``python benchmarks/perf/run.py``) whose modules the tests
import by name (``from benchmarks.perf import run``). Not installed with the package; run from the repository."""
