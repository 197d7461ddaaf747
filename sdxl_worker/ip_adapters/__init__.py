"""IP-Adapter image prompts: the operator's settings and the torch-free file checks (files.py), and how a job's image
prompt is encoded and steers the UNet (runtime.py)."""
