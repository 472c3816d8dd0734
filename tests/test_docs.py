"""Every ```python block in README.md and docs/**/*.md runs (blocks of one file share a
namespace, in order)."""
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
FILES = [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_doc_code_blocks_run(path):
  blocks = re.findall(r"```python\n(.*?)```", path.read_text(), re.S)
  ns: dict = {}
  for i, block in enumerate(blocks):
    exec(compile(block, f"{path.name}[block {i}]", "exec"), ns)


def test_there_are_doc_examples():
  assert sum(len(re.findall(r"```python\n", p.read_text())) for p in FILES) >= 10
