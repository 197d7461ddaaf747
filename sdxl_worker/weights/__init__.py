"""Weight files without torch where it can: safetensors headers and reads, the model layout, the architecture check."""
