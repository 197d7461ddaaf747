"""Where the model comes from: a folder (a network volume, or a model baked into the image) or a snapshot in a
Hugging Face cache (RunPod's cached models), resolved offline to the one folder the volume check and the loader
read."""

from sdxl_worker.sources.model_source import (
    DEFAULT_MODEL_CACHE,
    ModelSource,
    SourceError,
    cache_refusal,
    cached_repo,
    cached_repo_ids,
    hf_home_cache,
    holding_cache,
    hub_reference,
    model_caches,
    resolve_source,
)

__all__ = ["DEFAULT_MODEL_CACHE", "ModelSource", "SourceError", "cache_refusal", "cached_repo", "cached_repo_ids",
           "hf_home_cache", "holding_cache", "hub_reference", "model_caches", "resolve_source"]
