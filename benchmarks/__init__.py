"""Stock diffusers against this worker, one machine, one run: `python -m benchmarks` (see cli.py)."""
