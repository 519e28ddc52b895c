"""The results blocks of README.md and docs/reproduction.md are what `tprop report` prints from
the committed run folders, byte for byte."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tprop.cli import main

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"<!-- report: (\S+)((?: --\S+)*) -->\n(.*?)\n<!-- end report -->", re.S)
DOCS = ("README.md", "docs/reproduction.md")
BLOCKS = [(doc, m.group(1) + m.group(2), m.group(3)) for doc in DOCS
          for m in BLOCK.finditer((ROOT / doc).read_text())]  # fmt: skip


def test_every_document_has_its_report_blocks():
    assert {doc for doc, _, _ in BLOCKS} == {"README.md", "docs/reproduction.md"}


@pytest.mark.parametrize("doc,folder,text", BLOCKS, ids=[f"{d}:{f}" for d, f, _ in BLOCKS])
def test_report_block_is_what_the_report_prints(doc, folder, text, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    folder, *flags = folder.split()  # a block may ask for more: `<!-- report: DIR --settings -->`
    assert main(["report", folder, "--markdown-only", *flags]) == 0
    assert capsys.readouterr().out.strip() == text.strip(), f"{doc}: rerun the report"
