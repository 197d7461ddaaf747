"""ControlNets: the operator's settings and the torch-free folder checks (files.py), and how a job's ControlNets are
loaded, cached and steer the pipeline (runtime.py)."""
