"""Watching and stopping a job: RunPod's stop signals and a worker-side time bound end sampling at the next step,
and a job may ask for small previews of its image while it samples. Settings, the torch-free checks and the
runtime side by side."""
