"""The README's usage example runs, and .ci/run runs the README's test command."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.DOTALL)


def test_readme_python_example_runs():
    examples = _blocks("python")
    assert examples, "README has no python example"
    for example in examples:
        exec(compile(example, "README.md", "exec"), {})


def test_ci_runs_the_readme_test_command():
    test_commands = [block.strip() for block in _blocks("bash") if "-m pytest" in block]
    assert len(test_commands) == 1
    assert test_commands[0] in (ROOT / ".ci" / "run").read_text()
