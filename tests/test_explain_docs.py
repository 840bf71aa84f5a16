"""The library example in docs/explanations.md runs as written."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "explanations.md"


def test_library_example_runs(tmp_path, monkeypatch, capsys) -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    example = next(block for block in blocks if "draft_explanations" in block)
    monkeypatch.chdir(tmp_path)
    exec(compile(example, str(DOC), "exec"), {})
    printed = capsys.readouterr().out.split()
    assert 0.0 <= float(printed[0]) <= 1.0  # the AUROC
    assert (tmp_path / "demo.sqlite").exists()
