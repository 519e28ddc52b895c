"""The README's results block is what `tprop report` prints from the committed run folders."""

from __future__ import annotations

import re
from pathlib import Path

from tprop.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_readme_results_are_the_report(capsys, monkeypatch):
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- report: (\S+) -->\n(.*?)\n<!-- end report -->", readme, re.S)
    assert block, "README.md has no report block"
    monkeypatch.chdir(ROOT)
    assert main(["report", block.group(1), "--markdown-only"]) == 0
    assert capsys.readouterr().out.strip() == block.group(2).strip()
