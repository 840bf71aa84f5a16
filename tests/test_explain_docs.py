"""The library example in docs/explanations.md runs as written and prints what the page shows."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "explanations.md"
NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")


def example_and_output() -> tuple[str, str]:
    """Return the drafting example and the text block that follows it on the page."""
    text = DOC.read_text()
    pattern = r"```python\n(.*?draft_explanations\(.*?)```\s*It prints:\s*```text\n(.*?)```"
    match = re.search(pattern, text, flags=re.S)
    assert match, "docs/explanations.md has no drafting example followed by its output"
    return match.group(1), match.group(2)


def test_library_example_prints_documented_output(tmp_path, monkeypatch, capsys) -> None:
    example, documented = example_and_output()
    monkeypatch.chdir(tmp_path)
    exec(compile(example, str(DOC), "exec"), {})
    printed = capsys.readouterr().out
    assert (tmp_path / "demo.sqlite").exists()

    printed_lines, documented_lines = printed.strip().splitlines(), documented.strip().splitlines()
    assert len(printed_lines) == len(documented_lines), printed
    for got, expected in zip(printed_lines, documented_lines):
        # The words must match, but numbers may differ in the last digit across platforms.
        assert NUMBER.sub("#", got) == NUMBER.sub("#", expected), (got, expected)
        got_numbers = [float(n) for n in NUMBER.findall(got)]
        expected_numbers = [float(n) for n in NUMBER.findall(expected)]
        assert got_numbers == pytest.approx(expected_numbers, rel=1e-3, abs=1e-3), (got, expected)
