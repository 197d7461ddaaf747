"""One module per kind of stage; each returns typed results (benchmarks/results.py)."""
