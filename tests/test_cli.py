"""The ``elfatt`` command."""

from __future__ import annotations

import pytest

from elfatt.cli import main


def test_demo_prints_a_row_per_size(capsys):
    assert main(["demo", "--sides", "4", "9", "--repeats", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if "x" in line and line.strip()[0].isdigit()]
    assert len(rows) == 2


def test_bad_option_exits_nonzero():
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--sides", "0"])
    assert exit_info.value.code != 0
