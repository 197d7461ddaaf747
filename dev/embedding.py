"""Write an SDXL textual-inversion embedding for a model folder, in Civitai's SDXL format (`clip_l`, `clip_g`).

No embedding can be fetched here, so the tests and the demo make their own, for any model size (the tiny test model
too): random vectors, as wide as the model's two text encoders, as many as asked.

    python -m dev.embedding MODEL_DIR OUT.safetensors [--vectors N] [--seed N]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sdxl_worker.embeddings.files import PARTS
from sdxl_worker.logs import configure_logging


def widths(model_dir: Path) -> tuple[int, int]:
    """The two text encoders' token-embedding widths, from their configs."""
    return tuple(json.loads((model_dir / part / "config.json").read_text())["hidden_size"]  # type: ignore[return-value]
                 for part in ("text_encoder", "text_encoder_2"))


def write_embedding(model_dir: Path, out: Path, vectors: int = 2, seed: int = 0, std: float = 0.3) -> Path:
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    tensors = {part: torch.randn(vectors, width, generator=generator) * std
               for part, width in zip(PARTS, widths(model_dir), strict=True)}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, out)
    return out


def main(argv: list[str] | None = None) -> int:
    configure_logging("WARNING", stream=sys.stderr)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--vectors", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = write_embedding(args.model_dir, args.out, args.vectors, args.seed)
    print(f"wrote {path} ({args.vectors} vectors for text encoders {' and '.join(map(str, widths(args.model_dir)))})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
