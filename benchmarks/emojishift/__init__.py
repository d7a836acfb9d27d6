"""EmojiShift: a small real-image distribution-shift benchmark (prepare.py, align.py, run.py, sweeps.py)."""
