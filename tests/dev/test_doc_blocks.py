"""The docs check finds every bash block, with the reason a block is not run here."""

from __future__ import annotations

from pathlib import Path

from dev.doc_blocks import Block, blocks, documents


def test_blocks_and_their_not_run_reasons_are_read_from_the_page(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("# x\n\n```bash\necho one\n```\n\n```python\nprint(2)\n```\n")
    (tmp_path / "docs" / "b.md").write_text("<!-- not run here: it needs Docker -->\n```bash\ndocker build .\n```\n")
    assert documents(tmp_path) == ["README.md", "docs/b.md"]
    assert blocks(tmp_path, documents(tmp_path)) == [Block("README.md", 3, "echo one\n", None),
                                                     Block("docs/b.md", 2, "docker build .\n", "it needs Docker")]

