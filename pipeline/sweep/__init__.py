"""Hyper-parameter sweeps: ``spec`` (space files, no Ray), ``search`` (Ray Tune), ``report`` (tables, best run)."""
