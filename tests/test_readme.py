"""The README's shown terminal output is what the commands print today."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import pytest
from conftest import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")


def _run(command: str) -> str:
    argv = shlex.split(command)
    assert argv[0] == "qalc"
    result = subprocess.run([sys.executable, "-m", "qalign_dsl", *argv[1:]], cwd=ROOT,
                            capture_output=True, text=True, timeout=120,
                            env={"PATH": "/usr/bin:/bin", "NO_COLOR": "1", "TERM": "dumb"})
    return result.stdout + result.stderr


def _examples() -> list[tuple[str, str]]:
    """(command, output): a ```text block that starts with `$ qalc …`, and a `qalc …` line
    in a ```bash block whose output is the plain ``` block right after it."""
    examples = []
    for body in re.findall(r"```text\n(.*?)```", README, re.S):
        first, _, output = body.partition("\n")
        if first.startswith("$ qalc "):
            examples.append((first[2:], output))
    shown = r"```bash\n(?:(?!```)[^\n]*\n)*?(qalc [^\n]*)\n```\n\n```\n(.*?)```"
    for command, output in re.findall(shown, README, re.S):  # the block's last command
        examples.append((command, output))
    return examples


def test_the_readme_shows_examples() -> None:
    commands = [command.split()[1] for command, _ in _examples()]
    assert "check" in commands and "diff" in commands


@pytest.mark.parametrize("command, output", _examples(), ids=lambda value: value[:40])
def test_readme_example_output_is_current(command: str, output: str) -> None:
    def lines(text: str) -> list[str]:
        return [line.rstrip() for line in text.strip().splitlines()]

    assert lines(_run(command)) == lines(output)
