"""`tprop report --update-docs DOC…`: rewrite the report blocks of Markdown documents.

A document quotes a report between two markers::

    <!-- report: docs/results/figure3 --only=figure3 -->
    …what `tprop report docs/results/figure3 --markdown-only --only=figure3` prints…
    <!-- end report -->

The folder is relative to the directory the command runs in (the repository root for this
project's docs); the flags a block may carry are `--only=KEYS` and `--settings`. Everything
outside the blocks is left byte for byte. `--check` writes nothing and fails when a block is
stale, which is what `tests/test_readme.py` asserts for README.md and docs/reproduction.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tprop.runs import ReportError
from tprop.sweep_flags import plural

START = re.compile(r"<!-- report: (.*?) -->\n")
END = "<!-- end report -->"


@dataclass(frozen=True)
class Block:
    """One quoted report: the text between its start marker's line end and its end marker."""

    line: int  # 1-based line of the start marker
    folder: str
    only: str | None
    settings: bool
    start: int  # offsets of the body in the document
    stop: int

    def body(self, text: str) -> str:
        return text[self.start : self.stop]


def _flags(spec: str, where: str) -> tuple[str, str | None, bool]:
    folder, *flags = spec.split()
    only, settings = None, False
    for f in flags:
        if f.startswith("--only="):
            only = f.removeprefix("--only=")
        elif f == "--settings":
            settings = True
        else:
            raise ReportError(
                f"{where}: unknown flag {f!r} in a report block; use --only=KEYS or --settings"
            )
    return folder, only, settings


def blocks(text: str, doc: str = "document") -> list[Block]:
    """The report blocks of `text`, in order; a start marker must be closed before the next."""
    found = []
    starts = list(START.finditer(text))
    for i, m in enumerate(starts):
        line = text.count("\n", 0, m.start()) + 1
        where = f"{doc}:{line}"
        limit = starts[i + 1].start() if i + 1 < len(starts) else len(text)
        end = text.find(END, m.end(), limit)
        if end < 0:
            raise ReportError(
                f"{where}: a report block without {END!r} before the next one; add it"
            )
        if not m.group(1).split():
            raise ReportError(
                f"{where}: a report block names no folder; write <!-- report: DIR -->"
            )
        folder, only, settings = _flags(m.group(1), where)
        found.append(Block(line, folder, only, settings, m.end(), end))
    return found


def render(block: Block) -> str:
    """What the block should hold: the report's Markdown, ending in one newline."""
    from tprop.report import markdown_text

    return markdown_text(block.folder, block.only, block.settings).strip() + "\n"


def refresh(text: str, doc: str = "document") -> tuple[str, list[Block]]:
    """`text` with every block rewritten, and the blocks that changed (a text without blocks is
    an error). Every block is rendered before anything is returned, so a bad folder leaves the
    caller nothing half done."""
    found = blocks(text, doc)
    if not found:
        raise ReportError(f"{doc} has no <!-- report: DIR --> block; nothing to update")
    parts, stale, at = [], [], 0
    for b in found:
        new = render(b)
        if b.body(text) != new:
            stale.append(b)
        parts += [text[at : b.start], new]
        at = b.stop
    return "".join(parts) + text[at:], stale


def update_docs(docs: list[str], check: bool) -> int:
    """Rewrite (or with `check`, only compare) the blocks of each document; 1 if any is stale
    under `check`. All documents are read and rendered before the first is written."""
    new: dict[Path, str] = {}
    stale_all = []
    for doc in docs:
        path = Path(doc)
        try:
            text = path.read_text()
        except OSError as e:
            raise ReportError(f"cannot read {doc}: {e.strerror or e}") from None
        updated, stale = refresh(text, doc)
        stale_all += [f"{doc}:{b.line} ({b.folder})" for b in stale]
        new[path] = updated
    if check:
        for s in stale_all:
            print(f"stale: {s}")
        print(f"{plural(len(stale_all), 'stale report block')} in {plural(len(docs), 'document')}")
        return 1 if stale_all else 0
    for path, text in new.items():
        if path.read_text() != text:
            path.write_text(text)
    for s in stale_all:
        print(f"updated: {s}")
    print(f"{plural(len(stale_all), 'report block')} updated in {plural(len(docs), 'document')}")
    return 0
