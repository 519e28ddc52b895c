"""Datasets: where the files live, how to fetch and check them, and how text becomes token ids.

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

Files live in `<root>/<name>/` (see `DatasetSpec.files`), each either plain or gzip (`.gz`);
`resolve_dir` says which root is used. Every problem a user can cause or fix (missing, empty,
binary or truncated files, unseen tokens, failed downloads, checksum mismatches) is a `DataError`
whose message is one line naming the file and the fix.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import os
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from array import array
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import IO, Literal

import numpy as np
import torch
from tqdm import tqdm

EOS = "<eos>"
UNK = "<unk>"
SPLITS = ("train", "valid", "test")

ENV_DATA_DIR = "TPROP_DATA_DIR"
"""Environment variable naming a data root; used when no `data_dir` is passed."""

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
_READ_BYTES = 1 << 20
_TIMEOUT_S = 60.0
# Some hosts (wikitext.smerity.com) refuse urllib's default "Python-urllib/x.y" agent.
_USER_AGENT = "tprop (research code; dataset fetch)"


class DataError(Exception):
    """A user-facing data problem; str(e) is ONE line naming the problem and the fix."""

    def __init__(self, message: str) -> None:
        # One line, always: the CLI prints str(e) as the whole error report.
        super().__init__(" ".join(message.splitlines()))


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


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset: its files on disk, where they come from, and how to check them."""

    name: str
    title: str
    kind: Literal["lines", "text8"]
    """'lines': train/valid/test files read line by line; 'text8': one file split by characters."""
    files: tuple[str, ...]
    """File names inside `<root>/<name>/` (each may also be stored as `<file>.gz`);
    for kind 'lines' they are the train, valid and test files, in that order."""
    url: str
    """Canonical address of the archive that `fetch` downloads."""
    members: Mapping[str, str]
    """Archive member path -> file name it is saved as."""
    sha256: Mapping[str, str | None]
    """File name -> sha256 of its raw (uncompressed) content; None where no published value
    was found (verify then reports 'no pinned checksum')."""
    licence: str
    shipped: bool = False
    """True if a copy ships inside the package (the last place `resolve_dir` looks)."""
    mirrors: tuple[str, ...] = ()
    """Addresses tried in order when `url` fails; the raw checksums guard them like `url`."""
    archive_md5: str | None = None
    """Published md5 of the archive itself, checked when downloading from `url` or a mirror; the
    only integrity check for datasets without raw checksums."""


def _lines_spec(
    name: str,
    title: str,
    ext: str,
    url: str,
    member_of: Mapping[str, str],
    sha256: Mapping[str, str | None],
    licence: str,
    **kw: object,
) -> DatasetSpec:
    files = tuple(f"{split}.{ext}" for split in SPLITS)
    return DatasetSpec(
        name=name,
        title=title,
        kind="lines",
        files=files,
        url=url,
        members={member_of[split]: f"{split}.{ext}" for split in SPLITS},
        sha256={f"{split}.{ext}": sha256[split] for split in SPLITS},
        licence=licence,
        **kw,  # type: ignore[arg-type]
    )


_PTB_URL = "http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz"
_PTB_LICENCE = (
    "Penn Treebank (LDC99T42, LDC licence) derivative; redistribution terms unclear: "
    "research use only, not shipped"
)
_WIKITEXT_LICENCE = "CC BY-SA 3.0 (Wikipedia text; Merity et al. 2016)"
# The Salesforce S3 bucket has answered 403 since 2024 (pytorch/text#2255); the dataset's author
# serves the same archives at wikitext.smerity.com (its ETag for wikitext-103-v1.zip equals the
# md5 that torchtext pins for the S3 copy).
_WIKITEXT_S3 = "https://s3.amazonaws.com/research.metamind.io/wikitext/"
_WIKITEXT_MIRROR = "https://wikitext.smerity.com/"

DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        _lines_spec(
            "ptb",
            "Penn Treebank, Mikolov's 10k-vocabulary word-level version",
            "txt",
            _PTB_URL,
            {s: f"simple-examples/data/ptb.{s}.txt" for s in SPLITS},
            # Raw sha256 from /work/shared/data/SOURCES.md; their md5s equal torchtext's pins.
            {
                "train": "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
                "valid": "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
                "test": "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
            },
            _PTB_LICENCE,
        ),
        _lines_spec(
            "ptb-char",
            "Penn Treebank, Mikolov's character-level version ('_' marks word boundaries)",
            "txt",
            _PTB_URL,
            {s: f"simple-examples/data/ptb.char.{s}.txt" for s in SPLITS},
            {  # SOURCES.md
                "train": "e313d91425e06c4f0a8fb6e881dcce0c291f2a0e9f4dda54833069b122f91da9",
                "valid": "21661f63ec355085879458b6524644d4add5573541b4be14fb52ab2e2e995eb8",
                "test": "1ef5607ac3c463b16e38bfe7900dd3bfc91de5a96e0f21e7eab5188b465b8ebe",
            },
            _PTB_LICENCE,
        ),
        _lines_spec(
            "wikitext-2",
            "WikiText-2 (v1, tokenised)",
            "tokens",
            _WIKITEXT_S3 + "wikitext-2-v1.zip",
            {s: f"wikitext-2/wiki.{s}.tokens" for s in SPLITS},
            {  # SOURCES.md (the pytorch/examples copy; its counts match the published ones)
                "train": "9e9fa1ad55b1c2c95b08e37dd8e653f638fac2c6de904b79e813611eefbc985f",
                "valid": "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8",
                "test": "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0",
            },
            _WIKITEXT_LICENCE,
            shipped=True,
            mirrors=(_WIKITEXT_MIRROR + "wikitext-2-v1.zip",),
        ),
        _lines_spec(
            "wikitext-103",
            "WikiText-103 (v1, tokenised)",
            "tokens",
            _WIKITEXT_S3 + "wikitext-103-v1.zip",
            {s: f"wikitext-103/wiki.{s}.tokens" for s in SPLITS},
            # No published sha256 of the extracted files was found.
            {s: None for s in SPLITS},
            _WIKITEXT_LICENCE,
            mirrors=(_WIKITEXT_MIRROR + "wikitext-103-v1.zip",),
            # Published in torchtext, torchtext/datasets/wikitext103.py (MD5 of the zip).
            archive_md5="9ddaacaf6af0710eda8c456decff7832",
        ),
        DatasetSpec(
            name="text8",
            title="text8 (first 10^8 characters of cleaned English Wikipedia), word level",
            kind="text8",
            files=("text8",),
            url="http://mattmahoney.net/dc/text8.zip",
            members={"text8": "text8"},
            # sha256 of the extracted 100,000,000-byte file as published in several independent
            # public repositories (dataset loaders and paper READMEs pinning "the uncompressed
            # text8"; one also pins the zip as a6640522afe8...e5232). Not re-checked here: no
            # copy of text8 was available.
            sha256={"text8": "6e890197040d37d85beb962ae1f041ff1d9a9ca8d20c7d99c85027eebf51dca7"},
            licence="Wikipedia text (CC BY-SA / GFDL), prepared by Matt Mahoney",
        ),
    )
}


# --------------------------------------------------------------------------- where files live


def cache_dir() -> Path:
    """The user cache root: `$XDG_CACHE_HOME/tprop`, else `~/.cache/tprop`."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "tprop"


def package_data_dir() -> Path:
    """Root of the copies shipped inside the package (WikiText-2 only)."""
    return Path(__file__).resolve().parent / "datasets"


def _spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


def _present(folder: Path, fname: str) -> Path | None:
    """`folder/fname`, else `folder/fname.gz`, else None (a plain file wins over its .gz)."""
    for path in (folder / fname, folder / f"{fname}.gz"):
        if path.is_file():
            return path
    return None


def _candidate_roots(spec: DatasetSpec, data_dir: str | os.PathLike | None) -> list[Path]:
    roots = []
    if data_dir is not None:
        roots.append(Path(data_dir).expanduser())
    if os.environ.get(ENV_DATA_DIR):
        roots.append(Path(os.environ[ENV_DATA_DIR]).expanduser())
    roots.append(cache_dir())
    if spec.shipped:
        roots.append(package_data_dir())
    return roots


def _fetch_root(data_dir: str | os.PathLike | None) -> Path:
    """Where `fetch` writes: the first configured root (the package copy is never written)."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    if os.environ.get(ENV_DATA_DIR):
        return Path(os.environ[ENV_DATA_DIR]).expanduser()
    return cache_dir()


def _locate(
    spec: DatasetSpec, data_dir: str | os.PathLike | None
) -> tuple[Path | None, list[Path]]:
    """The first candidate folder holding every file, and the folders looked in.

    A folder holding only some of the files is an error rather than a reason to look further:
    mixing splits from two copies would silently give wrong numbers.
    """
    looked = []
    for root in _candidate_roots(spec, data_dir):
        folder = root / spec.name
        looked.append(folder)
        found = [f for f in spec.files if _present(folder, f) is not None]
        if len(found) == len(spec.files):
            return folder, looked
        if found:
            missing = [f for f in spec.files if f not in found]
            raise DataError(
                f"{spec.name}: {folder} has {', '.join(found)} but not {', '.join(missing)} "
                f"(plain or .gz); add the missing files or run `tprop data fetch {spec.name}`"
            )
    return None, looked


def resolve_dir(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """The folder `<root>/<name>` that `load_corpus(name, data_dir)` reads.

    Roots are tried in order: `data_dir`, then `$TPROP_DATA_DIR`, then the user cache
    (`cache_dir()`), then, for wikitext-2 only, the copy shipped in the package; the first root
    whose `<name>/` folder holds every file wins.
    """
    spec = _spec(name)
    folder, looked = _locate(spec, data_dir)
    if folder is None:
        wanted = ", ".join(spec.files)
        raise DataError(
            f"{name}: data files not found; looked for {wanted} (plain or .gz) in "
            f"{', '.join(map(str, looked))}; run `tprop data fetch {name}` (downloads into "
            f"{_fetch_root(data_dir) / name}) or pass --data-dir DIR with the files in DIR/{name}/"
        )
    return folder


# --------------------------------------------------------------------------- reading files


def _open_binary(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


@contextmanager
def _reading(path: Path, name: str) -> Iterator[None]:
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
    with io.TextIOWrapper(_open_binary(path), encoding="utf-8", newline="\n") as f:
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

    with _reading(path, name):
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
    with _reading(path, name), _open_binary(path) as f:
        text = f.read().decode("utf-8")
    _check_text(text, path, name)
    return text


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
    train_lookup = {**stoi, **dict.fromkeys(rare, unk)}  # every train word -> its id or <unk>

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


def load_corpus(
    name: str,
    data_dir: str | os.PathLike | None = None,
    text8_split: str = "99m-1m",
) -> Corpus:
    """Read and tokenise dataset `name` from the folder `resolve_dir(name, data_dir)`.

    `text8_split` picks a row of TEXT8_SPLITS and is ignored for the other datasets.
    """
    spec = _spec(name)
    if spec.kind == "text8" and text8_split not in TEXT8_SPLITS:
        raise DataError(
            f"text8: unknown split {text8_split!r}; choose one of {', '.join(TEXT8_SPLITS)}"
        )
    folder = resolve_dir(name, data_dir)
    paths = [_present(folder, fname) for fname in spec.files]
    assert all(p is not None for p in paths)  # resolve_dir guarantees every file
    if spec.kind == "text8":
        return read_text8(paths[0], TEXT8_SPLITS[text8_split])  # type: ignore[arg-type]
    stoi: dict[str, int] = {}
    train, valid, test = (
        _encode_lines(path, name, stoi, grow=(split == "train"))  # type: ignore[arg-type]
        for split, path in zip(SPLITS, paths, strict=True)
    )
    return Corpus(name, Vocab(itos=list(stoi), stoi=stoi), train, valid, test, str(folder))


# --------------------------------------------------------------------------- checksums


def _sha256_raw(path: Path, name: str) -> str:
    """sha256 of the raw content: the decompressed bytes for a .gz file."""
    digest = hashlib.sha256()
    with _reading(path, name), _open_binary(path) as f:
        while block := f.read(_READ_BYTES):
            digest.update(block)
    return digest.hexdigest()


def verify(
    name: str, data_dir: str | os.PathLike | None = None
) -> list[tuple[str, str, bool | None]]:
    """Check the files `load_corpus(name, data_dir)` would read against the pinned sha256.

    One row per file: (path, sha256 of its raw content, whether it matches the pin). The third
    value is None where the dataset has no pinned checksum (wikitext-103): "unknown", not "bad".
    """
    spec = _spec(name)
    folder = resolve_dir(name, data_dir)
    rows = []
    for fname in spec.files:
        path = _present(folder, fname)
        assert path is not None
        found = _sha256_raw(path, name)
        pin = spec.sha256.get(fname)
        rows.append((str(path), found, None if pin is None else found == pin))
    return rows


# --------------------------------------------------------------------------- downloading


def _temp_path(folder: Path, stem: str) -> Path:
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{stem}.", suffix=".part")
    os.close(fd)
    return Path(tmp)


def _download(url: str, dest: Path, name: str, progress: bool) -> None:
    """Stream `url` into `dest` with a progress bar; raises OSError/URLError/HTTPException."""
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response, open(dest, "wb") as out:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        written = 0
        with tqdm(
            total=total,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=f"fetch {name}",
            disable=None if progress else True,  # a bar only on a terminal
        ) as bar:
            while block := response.read(_READ_BYTES):
                out.write(block)
                written += len(block)
                bar.update(len(block))
    if total is not None and written != total:
        raise http.client.IncompleteRead(b"", total - written)


def _describe_failure(e: BaseException) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, urllib.error.URLError):
        return str(e.reason)
    if isinstance(e, http.client.IncompleteRead):
        return "connection closed before the download was complete"
    return str(e) or type(e).__name__


def _download_first(urls: Sequence[str], dest: Path, name: str, progress: bool) -> str:
    """Download the first of `urls` that works into `dest`; returns the one used."""
    failures = []
    for url in urls:
        try:
            _download(url, dest, name, progress)
            return url
        except (OSError, ValueError, http.client.HTTPException) as e:  # URLError is an OSError
            failures.append(f"{url}: {_describe_failure(e)}")
    raise DataError(
        f"{name}: download failed ({'; '.join(failures)}); check the network, pass --url with "
        f"another address of the archive, or download it by hand and put its files in "
        f"{dest.parent}"
    )


def _copy_hashed(src: IO[bytes], folder: Path, fname: str) -> tuple[Path, str]:
    """Copy `src` to a temporary file in `folder`; returns it and the sha256 of what was copied."""
    tmp = _temp_path(folder, fname)
    digest = hashlib.sha256()
    with open(tmp, "wb") as out:
        while block := src.read(_READ_BYTES):
            digest.update(block)
            out.write(block)
    return tmp, digest.hexdigest()


def _member_names(names: list[str]) -> dict[str, str]:
    """Archive names keyed without a leading './' (tar files often store them that way)."""
    out = {}
    for n in names:
        key = n
        while key.startswith("./"):
            key = key[2:]
        out[key] = n
    return out


def _extract(
    archive: Path, spec: DatasetSpec, folder: Path, url: str, temps: list[Path]
) -> dict[str, tuple[Path, str]]:
    """Copy the spec's members out of `archive` into temporary files in `folder`.

    Returns file name -> (temporary path, sha256); every temporary path is also added to `temps`
    (as soon as it exists) so the caller can remove them on any failure.
    """
    out: dict[str, tuple[Path, str]] = {}

    def missing(member: str) -> DataError:
        return DataError(
            f"{spec.name}: the archive from {url} has no member {member}; is the URL right?"
        )

    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                names = _member_names(zf.namelist())
                for member, fname in spec.members.items():
                    if member not in names:
                        raise missing(member)
                    with zf.open(names[member]) as src:
                        tmp, digest = _copy_hashed(src, folder, fname)
                    temps.append(tmp)
                    out[fname] = (tmp, digest)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive, "r:*") as tf:
                names = _member_names(tf.getnames())
                for member, fname in spec.members.items():
                    src = tf.extractfile(names[member]) if member in names else None
                    if src is None:  # absent, or not a regular file
                        raise missing(member)
                    with src:
                        tmp, digest = _copy_hashed(src, folder, fname)
                    temps.append(tmp)
                    out[fname] = (tmp, digest)
        else:
            raise DataError(
                f"{spec.name}: the file downloaded from {url} is not a zip or tar archive; "
                f"is the URL right?"
            )
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as e:
        raise DataError(
            f"{spec.name}: the archive downloaded from {url} is corrupt ({e}); try again"
        ) from e
    return out


def fetch(
    name: str,
    data_dir: str | os.PathLike | None = None,
    url: str | None = None,
    progress: bool = True,
    expected_sha256: Mapping[str, str | None] | None = None,
) -> Path:
    """Download dataset `name`, check it and put its files in `<root>/<name>/`; returns the folder.

    The root is `data_dir`, else `$TPROP_DATA_DIR`, else the user cache. The archive is
    downloaded from `url` (default: the canonical address, then its mirrors) into a temporary
    file in the target folder, the needed members are extracted to temporary files there, and
    only when every raw sha256 matches its pin (`expected_sha256`, default the dataset's pins;
    None entries are not checked) are they renamed into place with os.replace. On any failure
    nothing new is left in the folder. Files are stored uncompressed.
    """
    spec = _spec(name)
    pins = dict(spec.sha256 if expected_sha256 is None else expected_sha256)
    folder = _fetch_root(data_dir) / name
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(
            f"{name}: cannot create {folder}: {e.strerror or e}; pass --data-dir DIR"
        ) from e

    urls = [url] if url else [spec.url, *spec.mirrors]
    temps: list[Path] = []
    try:
        archive = _temp_path(folder, "download")
        temps.append(archive)
        used = _download_first(urls, archive, name, progress)
        if url is None and spec.archive_md5 is not None:
            md5 = hashlib.md5(usedforsecurity=False)
            with open(archive, "rb") as f:
                while block := f.read(_READ_BYTES):
                    md5.update(block)
            if md5.hexdigest() != spec.archive_md5:
                raise DataError(
                    f"{name}: the archive from {used} has md5 {md5.hexdigest()}, expected "
                    f"{spec.archive_md5}; nothing was written; try again later"
                )
        extracted = _extract(archive, spec, folder, used, temps)
        for fname, (_, digest) in extracted.items():
            pin = pins.get(fname)
            if pin is not None and digest != pin:
                raise DataError(
                    f"{name}: checksum mismatch for {fname} from {used}: sha256 {digest}, "
                    f"expected {pin}; nothing was written; the download is corrupt or the "
                    f"server's copy differs from the pinned one"
                )
        for fname, (tmp, _) in extracted.items():
            os.replace(tmp, folder / fname)
    except OSError as e:  # local disk problems (the network ones are DataErrors already)
        raise DataError(f"{name}: cannot write into {folder}: {e.strerror or e}") from e
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
    return folder


# --------------------------------------------------------------------------- listing


def describe(data_dir: str | os.PathLike | None = None) -> list[dict]:
    """One row per dataset for `tprop data list`.

    Keys: name, title, where (folder the files would be read from, or None), files (their
    paths), problem (why they cannot be read, or None), licence, url, shipped, pinned (whether
    every file has a pinned sha256).
    """
    rows = []
    for name, spec in DATASETS.items():
        problem = None
        try:
            folder, _ = _locate(spec, data_dir)
        except DataError as e:
            folder, problem = None, str(e)
        files = [str(_present(folder, f)) for f in spec.files] if folder is not None else []
        rows.append(
            {
                "name": name,
                "title": spec.title,
                "where": str(folder) if folder is not None else None,
                "files": files,
                "problem": problem,
                "licence": spec.licence,
                "url": spec.url,
                "shipped": spec.shipped,
                "pinned": all(spec.sha256.get(f) is not None for f in spec.files),
            }
        )
    return rows
