"""Making a volume right for the worker, offline: the fp16 set written beside the standard files, a single-file
checkpoint converted to a diffusers folder (`prepare_volume.py` is the command)."""
