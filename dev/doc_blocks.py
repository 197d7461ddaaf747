"""Run every ```bash block of README.md and docs/ as a user pastes it: each block on its own, in a fresh bash, from
the root of a fresh clone of this repository (what is committed), after README's first command (the demo).

A block that cannot run on this machine says why in an HTML comment on the line before its fence,
`<!-- not run here: it needs Docker -->`; it is listed as not run, with that reason. A block fails when any of its
commands fails (`bash -eo pipefail`) or it runs past TIMEOUT_S.

    python -m dev.doc_blocks [FILE ...] [--keep]

Exit 0 when every block that runs passed. The clone is removed afterwards unless `--keep`.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 600
SETUP = "bash scripts/demo.sh\n"
_BLOCK = re.compile(r"(?:<!-- not run here: (?P<why>[^>]*?) -->\n)?```bash\n(?P<code>.*?)```", re.S)


@dataclass(frozen=True)
class Block:
    """One ```bash block: where it is, its text, and why it is not run here (None: it is run)."""

    file: str
    line: int
    code: str
    not_run: str | None


def blocks(root: Path, names: list[str]) -> list[Block]:
    """Every ```bash block of the documents `names` (relative to `root`), in order."""
    found = []
    for name in names:
        text = (root / name).read_text()
        for match in _BLOCK.finditer(text):
            line = text.count("\n", 0, match.start("code"))
            found.append(Block(name, line, match["code"], match["why"]))
    return found


def documents(root: Path) -> list[str]:
    """README, then docs/ by name."""
    return ["README.md", *sorted(path.relative_to(root).as_posix() for path in (root / "docs").glob("*.md"))]


def run_block(block: Block, where: Path) -> tuple[bool, float, str]:
    """(passed, seconds, the output's last lines)."""
    started = time.perf_counter()
    try:
        run = subprocess.run(["bash", "-eo", "pipefail", "-c", block.code], cwd=where, capture_output=True, text=True,
                             timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return False, time.perf_counter() - started, f"ran past {TIMEOUT_S} s"
    tail = "\n".join((run.stdout + run.stderr).strip().splitlines()[-5:])
    return run.returncode == 0, time.perf_counter() - started, tail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", type=Path, help="documents (default: README.md and docs/*.md)")
    parser.add_argument("--keep", action="store_true", help="keep the clone the blocks ran in")
    args = parser.parse_args(argv)
    where = Path(tempfile.mkdtemp(prefix="doc-blocks-")) / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(where)], check=True)
    # The documents as committed, the clone's: what a user of this commit pastes.
    names = [path.resolve().relative_to(ROOT).as_posix() for path in args.files] or documents(where)
    # README's first command makes the venv and the demo volume every other block uses.
    setup = Block("README.md", 0, SETUP, None)
    todo = [setup, *blocks(where, names)]
    failed = ran = 0
    for block in todo:
        name = f"{block.file}:{block.line}"
        if block.not_run:
            print(f"-  {name}: not run here ({block.not_run})")
            continue
        passed, seconds, tail = run_block(block, where)
        ran += 1
        failed += not passed
        print(f"{'✅' if passed else '❌'} {name}: {seconds:.1f} s" + ("" if passed else f"\n{tail}"), flush=True)
    print(f"{ran} blocks run, {failed} failed, {len(todo) - ran} not run here (in {where})")
    if not args.keep:
        shutil.rmtree(where.parent, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
