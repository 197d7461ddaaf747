"""The job's contract: its fields (job_schema), prompts, samplers, input images and the encoded reply images."""
