"""How text becomes token ids: the tokenisation rules, `Vocab`, `Corpus`, and the readers.

Every line-oriented corpus (ptb, ptb-char, wikitext-2, wikitext-103) is read by one rule, the
one the published token counts use (pytorch/examples `word_language_model`):

- tokens are `line.split()` (any whitespace), and every line gets one `<eos>` after its tokens,
  blank lines included (WikiText's blank lines are part of its published counts);
- a line is text ending in `\\n`. Text after the last newline is a line only if it holds a token:
  the ptb-char files end with one stray space after the final newline, and counting it as a line
  would add an `<eos>` that the published counts do not have;
- the vocabulary comes from train only, ids in order of first occurrence in train (`<eos>` gets
  its id when it is first appended, i.e. after the first line's words); a valid/test token that
  train never saw is an error, because these corpora are published with a closed vocabulary.

text8 is one 100M-character line, so it is split by character offsets and gets no `<eos>`; see
`read_text8`.

Files are read from `resolve_dir(name, data_dir)` (see `registry`), each either plain or gzip
(`.gz`). Every problem a user can cause or fix (missing, empty, binary or truncated files,
unseen tokens) is a `DataError` whose message is one line naming the file and the fix.
"""

from __future__ import annotations

import gzip
import io
import os
import zlib
from array import array
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import IO

import numpy as np
import torch

from tprop.data.registry import SPLITS, DataError, present, resolve_dir, spec

EOS = "<eos>"
UNK = "<unk>"

TEXT8_SPLITS: dict[str, tuple[int, ...]] = {
    # Mikolov et al. 2014 ("Learning longer memory in recurrent neural networks"), the protocol the
    # paper's group used: train on the first 99M characters, validate on the last 1M, no test.
    "99m-1m": (99_000_000, 1_000_000),
    # The character-level convention (e.g. enwik8/text8 papers): 90M / 5M / 5M.
    "90m-5m-5m": (90_000_000, 5_000_000, 5_000_000),
}
"""text8 split protocols: consecutive character counts for train, valid[, test]."""

TEXT8_MIN_COUNT = 11
"""A text8 word enters the vocabulary if train has it more than 10 times; others become `<unk>`."""

_CHUNK_TOKENS = 1 << 20  # tokens held as str at once; bounds memory on WikiText-103 (103M tokens)


@dataclass(frozen=True)
class Vocab:
    """Token <-> id maps; ids are positions in `itos`."""

    itos: list[str]  # id -> token
    stoi: dict[str, int]  # token -> id

    def __len__(self) -> int:
        return len(self.itos)


@dataclass(frozen=True)
class Corpus:
    """A tokenised dataset: one vocabulary and a 1-D int64 id tensor per split."""

    name: str
    vocab: Vocab
    train: torch.Tensor  # (N_train,) int64 token ids
    valid: torch.Tensor  # (N_valid,)
    test: torch.Tensor | None  # (N_test,); None where the protocol has no test split (text8 99m-1m)
    source: str  # folder the files were read from (recorded in config.json)


# --------------------------------------------------------------------------- reading files


def open_binary(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


@contextmanager
def reading(path: Path, name: str) -> Iterator[None]:
    """Turn low-level read errors about `path` into one-line DataErrors naming it."""
    refetch = f"replace it with the original or run `tprop data fetch {name}`"
    try:
        yield
    except UnicodeDecodeError as e:
        raise DataError(
            f"{name}: {path} is not UTF-8 text (binary or wrong encoding); {refetch}"
        ) from e
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DataError(
            f"{name}: {path} is a truncated or corrupt gzip file ({e}); {refetch}"
        ) from e
    except OSError as e:
        raise DataError(f"{name}: cannot read {path}: {e.strerror or e}") from e


def _check_text(line: str, path: Path, name: str) -> None:
    # NUL never occurs in text; UTF-16 or other binary data can still decode as UTF-8.
    if "\x00" in line:
        raise DataError(
            f"{name}: {path} contains NUL bytes (a binary file, not text); replace it with the "
            f"original or run `tprop data fetch {name}`"
        )


def _lines(path: Path) -> Iterator[str]:
    """Lines of a plain or gzip UTF-8 file; only '\\n' ends a line (no '\\r' translation)."""
    with io.TextIOWrapper(open_binary(path), encoding="utf-8", newline="\n") as f:
        yield from f


def _first_line_with(path: Path, token: str) -> int:
    """1-based number of the first line of `path` holding `token` (slow path, errors only)."""
    for lineno, line in enumerate(_lines(path), 1):
        if token in line.split():
            return lineno
    return 0


def _encode_lines(path: Path, name: str, stoi: dict[str, int], grow: bool) -> torch.Tensor:
    """Token ids of one split file: whitespace tokens, `<eos>` after every line.

    grow=True (train): each new token gets the next id, so ids follow first occurrence.
    grow=False (valid/test): every token must already be in `stoi`.
    """
    ids = array("q")
    pending: list[str] = []
    n_words = 0

    def flush() -> None:
        if grow:
            for token in dict.fromkeys(pending):  # unique, in order of first occurrence
                stoi.setdefault(token, len(stoi))
        try:
            ids.extend(map(stoi.__getitem__, pending))
        except KeyError as e:
            token = e.args[0]
            lineno = _first_line_with(path, token)
            raise DataError(
                f"{name}: token {token!r} in {path} line {lineno} is not in the training "
                f"vocabulary; valid and test may only use words seen in train (map the others "
                f"to {UNK} when preparing the files)"
            ) from None
        pending.clear()

    with reading(path, name):
        for line in _lines(path):
            _check_text(line, path, name)
            tokens = line.split()
            if not tokens and not line.endswith("\n"):
                continue  # whitespace after the final newline is not a line (ptb-char)
            n_words += len(tokens)
            pending += tokens
            pending.append(EOS)
            if len(pending) >= _CHUNK_TOKENS:
                flush()
        flush()
    if n_words == 0:
        raise DataError(
            f"{name}: {path} is empty (no tokens); replace it with the original or run "
            f"`tprop data fetch {name}`"
        )
    return torch.frombuffer(ids, dtype=torch.int64).clone()


def _read_text(path: Path, name: str) -> str:
    with reading(path, name), open_binary(path) as f:
        text = f.read().decode("utf-8")
    _check_text(text, path, name)
    return text


def _text8_vocab(train_words: list[str], min_count: int) -> tuple[dict[str, int], dict[str, int]]:
    """The vocabulary (`stoi`) and a lookup giving every train word its id or `<unk>`'s.

    Words seen at least `min_count` times get ids in order of first occurrence; `<unk>` gets
    its id where the first rarer word occurs (or last, if there is none).
    """
    counts = Counter(train_words)  # a dict: keys in order of first occurrence
    stoi: dict[str, int] = {}
    rare: list[str] = []
    for word, count in counts.items():
        if count >= min_count:
            stoi[word] = len(stoi)
        else:
            stoi.setdefault(UNK, len(stoi))
            rare.append(word)
    unk = stoi.setdefault(UNK, len(stoi))
    return stoi, {**stoi, **dict.fromkeys(rare, unk)}


def read_text8(
    path: str | os.PathLike,
    split_chars: Sequence[int],
    min_count: int = TEXT8_MIN_COUNT,
) -> Corpus:
    """Read a text8-format file (one line of words, single spaces) into a word-level Corpus.

    `split_chars` are consecutive character counts for train, valid and (optionally) test; they
    must add up to the file's length. Each piece is cut at exactly those character offsets and
    then whitespace-tokenised, so a word straddling a boundary becomes two fragments, one at the
    end of the first split and one at the start of the next (as the published protocol, which
    is stated in characters, implies); the fragments are usually rare, hence `<unk>`.

    Vocabulary: words seen at least `min_count` times in train (default 11, i.e. "more than 10
    times"), ids in order of first occurrence in train. Every other word, in every split, maps
    to `<unk>`, whose id comes where the first rare train word occurs (or last, if train has
    none). No `<eos>` is added: the file has no lines or sentences.
    """
    path = Path(path)
    if len(split_chars) not in (2, 3) or min(split_chars) <= 0:
        raise DataError(
            f"text8: split_chars must be 2 or 3 positive character counts, got {tuple(split_chars)}"
        )
    text = _read_text(path, "text8")
    total = sum(split_chars)
    if len(text) != total:
        raise DataError(
            f"text8: {path} has {len(text):,} characters but the split {tuple(split_chars)} needs "
            f"exactly {total:,}; use the original text8 (run `tprop data fetch text8`)"
        )
    pieces, start = [], 0
    for n in split_chars:
        pieces.append(text[start : start + n].split())
        start += n
    del text
    train_words = pieces[0]
    if not train_words:
        raise DataError(f"text8: the train part of {path} has no words")

    stoi, train_lookup = _text8_vocab(train_words, min_count)
    unk = stoi[UNK]

    def encode(words: list[str], lookup: dict[str, int]) -> torch.Tensor:
        ids = np.fromiter(map(lookup.get, words, repeat(unk)), np.int64, len(words))
        return torch.from_numpy(ids)

    tensors = [encode(train_words, train_lookup)] + [encode(p, stoi) for p in pieces[1:]]
    return Corpus(
        name="text8",
        vocab=Vocab(itos=list(stoi), stoi=stoi),
        train=tensors[0],
        valid=tensors[1],
        test=tensors[2] if len(tensors) == 3 else None,
        source=str(path.parent),
    )


def text8_split_chars(text8_split: str) -> tuple[int, ...]:
    """Character counts of a text8 split: a protocol name of TEXT8_SPLITS, or "N,M[,K]"."""
    if text8_split in TEXT8_SPLITS:
        return TEXT8_SPLITS[text8_split]
    parts = text8_split.split(",")
    if len(parts) in (2, 3) and all(p.strip().isdigit() and int(p) > 0 for p in parts):
        return tuple(int(p) for p in parts)
    raise DataError(
        f"text8: unknown split {text8_split!r}; choose one of {', '.join(TEXT8_SPLITS)} or give "
        "the character counts of train, valid[, test] as N,M[,K]"
    )


def load_corpus(
    name: str,
    data_dir: str | os.PathLike | None = None,
    text8_split: str = "99m-1m",
) -> Corpus:
    """Read and tokenise dataset `name` from the folder `resolve_dir(name, data_dir)`.

    `text8_split` names a row of TEXT8_SPLITS or gives the character counts ("N,M[,K]", for a
    file in text8's format of another length); it is ignored for the other datasets.
    """
    ds = spec(name)
    chars = text8_split_chars(text8_split) if ds.kind == "text8" else ()
    folder = resolve_dir(name, data_dir)
    paths = [present(folder, fname) for fname in ds.files]
    assert all(p is not None for p in paths)  # resolve_dir guarantees every file
    if ds.kind == "text8":
        return read_text8(paths[0], chars)  # type: ignore[arg-type]
    stoi: dict[str, int] = {}
    train, valid, test = (
        _encode_lines(path, name, stoi, grow=(split == "train"))  # type: ignore[arg-type]
        for split, path in zip(SPLITS, paths, strict=True)
    )
    return Corpus(name, Vocab(itos=list(stoi), stoi=stoi), train, valid, test, str(folder))
