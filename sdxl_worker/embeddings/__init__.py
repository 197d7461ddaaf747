"""Textual-inversion embeddings: the operator's settings and the torch-free file checks (files.py), and how a
prompt's embedding words become tokens of the text encoders (runtime.py)."""
