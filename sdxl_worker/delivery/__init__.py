"""Getting a job's images to the caller: in the reply while it fits RunPod's payload limit, else through a bucket."""
