"""LoRAs: the operator's settings and the torch-free file checks (files.py), and how a job's LoRAs are loaded,
merged into the UNet and put back (runtime.py)."""
