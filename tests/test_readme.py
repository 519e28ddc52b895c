"""The results blocks of README.md and docs/reproduction.md are what `tprop report` prints from
the committed run folders, byte for byte (`tprop report --update-docs … --check`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tprop.cli import main
from tprop.report_docs import blocks, render

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "docs/reproduction.md")
BLOCKS = [(doc, b) for doc in DOCS for b in blocks((ROOT / doc).read_text(), doc)]


def test_every_document_has_its_report_blocks():
    assert {doc for doc, _ in BLOCKS} == set(DOCS)


@pytest.mark.parametrize("doc,block", BLOCKS, ids=[f"{d}:{b.folder}" for d, b in BLOCKS])
def test_report_block_is_what_the_report_prints(doc, block, monkeypatch):
    monkeypatch.chdir(ROOT)
    text = (ROOT / doc).read_text()
    assert block.body(text) == render(block), (
        f"{doc}:{block.line}: run `tprop report --update-docs {doc}`"
    )


def test_the_check_command_agrees(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    assert main(["report", "--update-docs", *DOCS, "--check"]) == 0, capsys.readouterr().out
