"""The README's Python example runs as written, and its command lines name real subcommands."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_python_example_runs(tmp_path: Path) -> None:
    blocks = _code_blocks("python")
    assert blocks, "README.md has no python code block"
    for block in blocks:
        result = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert "with pole_angle" in result.stdout


def test_readme_commands_are_subcommands() -> None:
    from interlatent_mcp.cli import build_parser

    parser = build_parser()
    subcommands = set(parser._subparsers._group_actions[0].choices)  # noqa: SLF001
    command_lines = "\n".join(_code_blocks("text") + _code_blocks("bash"))
    mentioned = set(re.findall(r"^interlatent ([a-z-]+)", command_lines, flags=re.M))
    assert mentioned, "README.md shows no interlatent command line"
    assert mentioned <= subcommands, f"README names unknown subcommands: {mentioned - subcommands}"


def test_readme_opens_with_two_commands() -> None:
    first = _code_blocks("bash")[0].strip().splitlines()
    assert [line.split("#")[0].strip() for line in first] == ["bash dev.sh demo", "bash dev.sh test"]
