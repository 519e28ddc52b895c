"""Tests for tprop.data: published counts, the tokenisation rules, bad files, resolution order,
fetch against a real local HTTP server, and the text8 protocols on small synthetic files."""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import io
import os
import socket
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from tprop import data
from tprop.data import DataError

REPO_ROOT = Path(__file__).resolve().parents[1]
# Optional extra data: a data root holding the real PTB files (by default the checkout's sibling
# shared/data folder on the development machine). Tests that need it skip without it.
SHARED_DATA = Path(os.environ.get("TPROP_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No test sees the user's real data: no $TPROP_DATA_DIR, and an empty cache in tmp_path."""
    monkeypatch.delenv(data.ENV_DATA_DIR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    return tmp_path / "xdg-cache" / "tprop"


@pytest.fixture
def shared() -> Path:
    """A data root with the real PTB and PTB-char (`ptb/train.txt.gz`, ...), when there is one."""
    if not all((SHARED_DATA / name).is_dir() for name in ("ptb", "ptb-char")):
        pytest.skip(
            f"needs the real PTB: no {SHARED_DATA}/ptb and ptb-char folders; set "
            f"TPROP_SHARED_DATA to a data root holding them (e.g. after `tprop data fetch ptb "
            f"--data-dir DIR` and the same for ptb-char)"
        )
    return SHARED_DATA


def one_line(e: pytest.ExceptionInfo[DataError]) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def write(path: Path, content: str | bytes, gz: bool = False) -> Path:
    raw = content.encode() if isinstance(content, str) else content
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        raw = gzip.compress(raw)
    path.write_bytes(raw)
    return path


def write_splits(root: Path, name: str, splits: dict[str, str | bytes], gz: bool = False) -> Path:
    """Files `<root>/<name>/<split>.<ext>` as the dataset `name` expects them."""
    ext = "tokens" if name.startswith("wikitext") else "txt"
    for split, content in splits.items():
        write(root / name / f"{split}.{ext}", content, gz)
    return root / name


def first_occurrence_order(ids: torch.Tensor) -> bool:
    """True if every new id is exactly one more than the largest id seen before it."""
    running_max = torch.cummax(ids, 0).values
    steps = torch.diff(running_max, prepend=torch.tensor([-1]))
    return ids[0].item() == 0 and bool(((steps == 0) | (steps == 1)).all())


# --------------------------------------------------------------------------- published counts


def test_ptb_published_counts(shared: Path) -> None:
    c = data.load_corpus("ptb", shared)
    assert (len(c.train), len(c.valid), len(c.test)) == (929_589, 73_760, 82_430)
    assert len(c.vocab) == 10_000
    assert c.train.dtype == torch.int64 and c.train.dim() == 1
    assert c.source == str(shared / "ptb")
    assert first_occurrence_order(c.train)
    # The file starts " aer banknote berlitz ..."; <eos> gets its id after the first line.
    assert c.vocab.itos[:3] == ["aer", "banknote", "berlitz"]
    train = data.verify("ptb", shared)[0][0]  # train.txt or train.txt.gz
    opener = gzip.open if train.endswith(".gz") else open
    with opener(train, "rt") as f:
        first_line = f.readline().split()
    assert c.vocab.stoi[data.EOS] == len(first_line)
    assert [c.vocab.stoi[t] for t in c.vocab.itos] == list(range(len(c.vocab)))


def test_ptb_char_published_counts(shared: Path) -> None:
    c = data.load_corpus("ptb-char", shared)
    assert (len(c.train), len(c.valid), len(c.test)) == (5_017_482, 393_042, 442_423)
    assert len(c.vocab) == 50


def test_wikitext2_from_shipped_copy(isolated_env: Path) -> None:
    c = data.load_corpus("wikitext-2")  # no data_dir, no $TPROP_DATA_DIR, empty cache
    assert (len(c.train), len(c.valid), len(c.test)) == (2_088_628, 217_646, 245_569)
    assert len(c.vocab) == 33_278
    assert c.source == str(data.package_data_dir() / "wikitext-2")
    assert first_occurrence_order(c.train)
    assert all(ok for _, _, ok in data.verify("wikitext-2"))


def test_verify_matches_pins_for_shared_ptb(shared: Path) -> None:
    for name in ("ptb", "ptb-char"):
        rows = data.verify(name, shared)
        names = [Path(p).name.removesuffix(".gz") for p, _, _ in rows]
        assert names == ["train.txt", "valid.txt", "test.txt"]
        assert all(ok is True for _, _, ok in rows)


# --------------------------------------------------------------------------- tokenisation rules


def test_eos_per_line_blank_lines_and_trailing_whitespace(tmp_path: Path) -> None:
    write_splits(
        tmp_path,
        "ptb",
        {
            "train": "a b\n\nc a\n",  # the blank line gets an <eos> too
            "valid": "c a",  # no final newline: still a line
            "test": "a\n ",  # a space after the last newline is not a line
        },
    )
    c = data.load_corpus("ptb", tmp_path)
    assert c.vocab.itos == ["a", "b", data.EOS, "c"]  # ids in order of first occurrence
    assert c.train.tolist() == [0, 1, 2, 2, 3, 0, 2]
    assert c.valid.tolist() == [3, 0, 2]
    assert c.test.tolist() == [0, 2]


def test_gzip_and_plain_read_alike(tmp_path: Path) -> None:
    splits = {"train": "x y z\ny x\n", "valid": "z\n", "test": "x y\n"}
    plain = data.load_corpus("ptb", write_splits(tmp_path / "plain", "ptb", splits).parent)
    packed = data.load_corpus("ptb", write_splits(tmp_path / "gz", "ptb", splits, gz=True).parent)
    assert plain.vocab == packed.vocab
    for split in data.SPLITS:
        assert torch.equal(getattr(plain, split), getattr(packed, split))


def test_unseen_token_names_file_and_line(tmp_path: Path) -> None:
    folder = write_splits(
        tmp_path, "ptb", {"train": "a b\nb a\n", "valid": "a\nb\nzzz a\n", "test": "a\n"}
    )
    with pytest.raises(DataError) as e:
        data.load_corpus("ptb", tmp_path)
    msg = one_line(e)
    assert "'zzz'" in msg and f"{folder / 'valid.txt'} line 3" in msg
    assert "not in the training vocabulary" in msg


# --------------------------------------------------------------------------- bad files


GOOD = {"train": "a b\n", "valid": "a\n", "test": "b\n"}


@pytest.mark.parametrize(
    ("content", "gz", "expect"),
    [
        ("", False, "is empty"),
        (" \n\n  \n", False, "is empty"),
        ("", True, "is empty"),
        (b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x01binary", False, "is not UTF-8"),
        ("a b\n".encode("utf-16"), False, "is not UTF-8"),
        ("a b\n".encode("utf-16-le"), False, "NUL bytes"),
        (b"a b\n", False, None),  # control: the same layout loads fine
    ],
)
def test_bad_train_file(tmp_path: Path, content: str | bytes, gz: bool, expect: str | None) -> None:
    write_splits(tmp_path, "ptb", {**GOOD, "train": content}, gz=gz)
    if expect is None:
        data.load_corpus("ptb", tmp_path)
        return
    with pytest.raises(DataError) as e:
        data.load_corpus("ptb", tmp_path)
    msg = one_line(e)
    assert expect in msg and "train.txt" in msg


def test_truncated_and_fake_gzip(tmp_path: Path) -> None:
    folder = write_splits(tmp_path, "ptb", GOOD)
    packed = gzip.compress(("the quick brown fox\n" * 5000).encode())
    (folder / "train.txt").unlink()
    (folder / "train.txt.gz").write_bytes(packed[: len(packed) // 2])
    with pytest.raises(DataError) as e:
        data.load_corpus("ptb", tmp_path)
    assert "truncated or corrupt gzip" in one_line(e) and "train.txt.gz" in str(e.value)

    (folder / "train.txt.gz").write_bytes(b"plain text, not gzip\n")
    with pytest.raises(DataError) as e:
        data.load_corpus("ptb", tmp_path)
    assert "truncated or corrupt gzip" in one_line(e)

    with pytest.raises(DataError) as e:  # verify reads the same way
        data.verify("ptb", tmp_path)
    assert "train.txt.gz" in one_line(e)


def test_missing_files_say_where_and_how(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_env: Path
) -> None:
    monkeypatch.setenv(data.ENV_DATA_DIR, str(tmp_path / "env"))
    with pytest.raises(DataError) as e:
        data.load_corpus("ptb")
    msg = one_line(e)
    for folder in (tmp_path / "env" / "ptb", isolated_env / "ptb"):
        assert str(folder) in msg
    assert "train.txt, valid.txt, test.txt" in msg
    assert "tprop data fetch ptb" in msg and "tprop data add ptb PATH" in msg
    assert "--data-dir" in msg

    # A named folder is the only one looked in: the message names it and how to fill it.
    with pytest.raises(DataError) as e:
        data.load_corpus("ptb", tmp_path / "arg")
    msg = one_line(e)
    assert str(tmp_path / "arg" / "ptb") in msg and str(tmp_path / "env") not in msg
    assert "train.txt, valid.txt, test.txt" in msg
    assert f"tprop data fetch ptb --data-dir {tmp_path / 'arg'}" in msg
    assert f"tprop data add ptb PATH --data-dir {tmp_path / 'arg'}" in msg


def test_incomplete_folder_is_an_error_not_a_fallthrough(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_splits(tmp_path / "arg", "ptb", {"train": "a\n"})
    write_splits(tmp_path / "env", "ptb", GOOD)
    monkeypatch.setenv(data.ENV_DATA_DIR, str(tmp_path / "env"))
    with pytest.raises(DataError) as e:
        data.load_corpus("ptb", tmp_path / "arg")
    msg = one_line(e)
    assert "has train.txt but not valid.txt, test.txt" in msg


def test_unknown_dataset_and_text8_split() -> None:
    with pytest.raises(DataError) as e:
        data.load_corpus("imdb")
    assert "ptb, ptb-char, wikitext-2, wikitext-103, text8" in one_line(e)
    with pytest.raises(DataError) as e:
        data.load_corpus("text8", text8_split="50-50")
    assert "99m-1m, 90m-5m-5m" in one_line(e)


def test_data_error_is_always_one_line() -> None:
    assert str(DataError("first\nsecond")) == "first second"


# --------------------------------------------------------------------------- resolution order


def test_resolution_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_env: Path
) -> None:
    def copy(root: Path, marker: str) -> Path:
        return write_splits(
            root, "wikitext-2", {"train": f"{marker} a\n", "valid": "a\n", "test": "a\n"}
        )

    def first_token(**kw: object) -> str:
        c = data.load_corpus("wikitext-2", **kw)  # type: ignore[arg-type]
        assert data.resolve_dir("wikitext-2", **kw) == Path(c.source)  # type: ignore[arg-type]
        return c.vocab.itos[0]

    shipped_first = data.EOS  # the shipped WikiText-2 train file starts with a blank line
    assert first_token() == shipped_first
    copy(isolated_env, "cache")
    assert first_token() == "cache"
    copy(tmp_path / "env", "env")
    monkeypatch.setenv(data.ENV_DATA_DIR, str(tmp_path / "env"))
    assert first_token() == "env"
    copy(tmp_path / "arg", "arg")
    assert first_token(data_dir=tmp_path / "arg") == "arg"
    # A named data_dir is authoritative: without the dataset it is an error, not a fallthrough
    # to $TPROP_DATA_DIR, the cache or the shipped copy.
    for nothing in (tmp_path / "nothing-here", tmp_path / "empty"):
        (tmp_path / "empty" / "wikitext-2").mkdir(parents=True, exist_ok=True)
        with pytest.raises(DataError) as e:
            data.resolve_dir("wikitext-2", nothing)
        assert str(nothing / "wikitext-2") in one_line(e) and "--data-dir" in str(e.value)
        with pytest.raises(DataError):
            data.load_corpus("wikitext-2", nothing)
    monkeypatch.delenv(data.ENV_DATA_DIR)
    with pytest.raises(DataError):
        data.load_corpus("wikitext-2", tmp_path / "nothing-here")  # not even the shipped copy


def test_describe_lists_every_dataset(tmp_path: Path) -> None:
    rows = {row["name"]: row for row in data.describe()}
    assert list(rows) == list(data.DATASETS)
    assert rows["wikitext-2"]["shipped"] and not rows["ptb"]["shipped"]
    assert rows["wikitext-2"]["where"] == str(data.package_data_dir() / "wikitext-2")
    assert rows["ptb"]["where"] is None and rows["ptb"]["files"] == []
    assert rows["wikitext-103"]["pinned"] is False and rows["ptb"]["pinned"] is True
    write_splits(tmp_path, "ptb", GOOD, gz=True)
    rows = {row["name"]: row for row in data.describe(tmp_path)}
    assert rows["ptb"]["where"] == str(tmp_path / "ptb")
    assert rows["ptb"]["files"][0] == str(tmp_path / "ptb" / "train.txt.gz")


# --------------------------------------------------------------------------- fetch


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A real HTTP server on 127.0.0.1 serving tmp_path/www; yields (folder, base URL)."""
    www = tmp_path / "www"
    www.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=www))
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


PTB_TINY = {"train": " the cat sat \n the dog \n", "valid": " the dog sat \n", "test": " cat \n"}
CHAR_TINY = {s: " ".join(t.replace(" ", "_")) + "\n" for s, t in PTB_TINY.items()}


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def make_tgz(path: Path, members: dict[str, str]) -> None:
    with tarfile.open(path, "w:gz") as tf:
        for name, text in members.items():
            raw = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tf.addfile(info, io.BytesIO(raw))


def make_zip(path: Path, members: dict[str, str]) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, text in members.items():
            zf.writestr(name, text)


@pytest.fixture
def simple_examples(server: tuple[Path, str]) -> str:
    """URL of a tgz shaped like Mikolov's simple-examples.tgz (tar names start with './')."""
    www, base = server
    members = {f"./simple-examples/data/ptb.{s}.txt": t for s, t in PTB_TINY.items()}
    members |= {f"./simple-examples/data/ptb.char.{s}.txt": t for s, t in CHAR_TINY.items()}
    members["./simple-examples/README"] = "other files are ignored\n"
    make_tgz(www / "simple-examples.tgz", members)
    return f"{base}/simple-examples.tgz"


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_fetch_ptb_and_ptb_char_from_tgz(tmp_path: Path, simple_examples: str) -> None:
    root = tmp_path / "root"
    pins = {f"{s}.txt": sha(t) for s, t in PTB_TINY.items()}
    folder = data.fetch("ptb", root, url=simple_examples, progress=False, expected_sha256=pins)
    assert folder == root / "ptb"
    assert leftovers(folder) == ["test.txt", "train.txt", "valid.txt"]  # no temporary files
    assert (folder / "valid.txt").read_text() == PTB_TINY["valid"]
    c = data.load_corpus("ptb", root)
    assert (len(c.train), len(c.valid), len(c.test)) == (7, 4, 2)
    # The tiny files are not the real PTB: verify (default pins) says so.
    assert [ok for _, _, ok in data.verify("ptb", root)] == [False, False, False]

    pins = {f"{s}.txt": sha(t) for s, t in CHAR_TINY.items()}
    data.fetch("ptb-char", root, url=simple_examples, progress=False, expected_sha256=pins)
    assert data.load_corpus("ptb-char", root).vocab.itos[:3] == ["_", "t", "h"]


def test_fetch_wikitext2_zip_into_env_dir(
    tmp_path: Path, server: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    www, base = server
    texts = {"train": " = A = \n\n a b \n", "valid": " a \n", "test": " b \n"}
    make_zip(www / "wt2.zip", {f"wikitext-2/wiki.{s}.tokens": t for s, t in texts.items()})
    monkeypatch.setenv(data.ENV_DATA_DIR, str(tmp_path / "env"))
    pins = {f"{s}.tokens": sha(t) for s, t in texts.items()}
    folder = data.fetch("wikitext-2", url=f"{base}/wt2.zip", progress=False, expected_sha256=pins)
    assert folder == tmp_path / "env" / "wikitext-2"
    c = data.load_corpus("wikitext-2")
    assert c.source == str(folder)  # the env copy wins over the shipped one
    assert c.train.tolist() == [0, 1, 0, 2, 2, 3, 4, 2]


def test_fetch_checksum_mismatch_leaves_nothing(tmp_path: Path, simple_examples: str) -> None:
    folder = tmp_path / "root" / "ptb"
    old = write(folder / "train.txt", "an older copy\n")
    with pytest.raises(DataError) as e:
        data.fetch("ptb", tmp_path / "root", url=simple_examples, progress=False)  # real pins
    msg = one_line(e)
    assert "checksum mismatch" in msg and "nothing was written" in msg
    assert leftovers(folder) == ["train.txt"] and old.read_text() == "an older copy\n"

    pins = {"train.txt": sha(PTB_TINY["train"]), "valid.txt": None, "test.txt": "0" * 64}
    with pytest.raises(DataError) as e:
        data.fetch(
            "ptb", tmp_path / "root", url=simple_examples, progress=False, expected_sha256=pins
        )
    assert "test.txt" in one_line(e) and "0" * 64 in str(e.value)
    assert leftovers(folder) == ["train.txt"] and old.read_text() == "an older copy\n"


def test_fetch_http_404_and_unreachable(tmp_path: Path, server: tuple[Path, str]) -> None:
    _, base = server
    with pytest.raises(DataError) as e:
        data.fetch("ptb", tmp_path / "root", url=f"{base}/missing.tgz", progress=False)
    assert "HTTP 404" in one_line(e) and f"{base}/missing.tgz" in str(e.value)
    assert leftovers(tmp_path / "root" / "ptb") == []

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DataError) as e:
        data.fetch("ptb", tmp_path / "root", url=f"http://127.0.0.1:{port}/x.tgz", progress=False)
    assert "download failed" in one_line(e)
    assert leftovers(tmp_path / "root" / "ptb") == []

    with pytest.raises(DataError) as e:
        data.fetch("ptb", tmp_path / "root", url="not a url", progress=False)
    assert "download failed" in one_line(e)


def test_fetch_rejects_non_archives_and_missing_members(
    tmp_path: Path, server: tuple[Path, str]
) -> None:
    www, base = server
    (www / "page.html").write_text("<html>moved</html>")
    with pytest.raises(DataError) as e:
        data.fetch("ptb", tmp_path / "root", url=f"{base}/page.html", progress=False)
    assert "not a zip or tar archive" in one_line(e)

    make_zip(www / "partial.zip", {"wikitext-2/wiki.train.tokens": "a\n"})
    with pytest.raises(DataError) as e:
        data.fetch("wikitext-2", tmp_path / "root", url=f"{base}/partial.zip", progress=False)
    assert "has no member wikitext-2/wiki.valid.tokens" in one_line(e)
    assert leftovers(tmp_path / "root" / "wikitext-2") == []


def test_fetch_tries_mirrors_and_checks_archive_md5(
    tmp_path: Path, server: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    www, base = server
    texts = {"train": "a b\n", "valid": "a\n", "test": "b\n"}
    make_zip(www / "wt103.zip", {f"wikitext-103/wiki.{s}.tokens": t for s, t in texts.items()})
    md5 = hashlib.md5((www / "wt103.zip").read_bytes()).hexdigest()
    spec = dataclasses.replace(
        data.DATASETS["wikitext-103"],
        url=f"{base}/gone.zip",
        mirrors=(f"{base}/wt103.zip",),
        archive_md5=md5,
    )
    monkeypatch.setitem(data.DATASETS, "wikitext-103", spec)
    data.fetch("wikitext-103", tmp_path / "root", progress=False)  # canonical 404 -> mirror
    assert len(data.load_corpus("wikitext-103", tmp_path / "root").train) == 3
    assert [ok for _, _, ok in data.verify("wikitext-103", tmp_path / "root")] == [None] * 3

    monkeypatch.setitem(
        data.DATASETS, "wikitext-103", dataclasses.replace(spec, archive_md5="0" * 32)
    )
    with pytest.raises(DataError) as e:
        data.fetch("wikitext-103", tmp_path / "other", progress=False)
    assert "expected " + "0" * 32 in one_line(e)
    assert leftovers(tmp_path / "other" / "wikitext-103") == []

    monkeypatch.setitem(
        data.DATASETS, "wikitext-103", dataclasses.replace(spec, mirrors=(f"{base}/also-gone.zip",))
    )
    with pytest.raises(DataError) as e:
        data.fetch("wikitext-103", tmp_path / "other", progress=False)
    assert one_line(e).count("HTTP 404") == 2  # every address tried is reported


# --------------------------------------------------------------------------- text8


def test_text8_protocol_constants() -> None:
    assert data.TEXT8_SPLITS["99m-1m"] == (99_000_000, 1_000_000)
    assert data.TEXT8_SPLITS["90m-5m-5m"] == (90_000_000, 5_000_000, 5_000_000)
    assert all(sum(s) == 100_000_000 for s in data.TEXT8_SPLITS.values())
    assert data.TEXT8_MIN_COUNT == 11  # "seen more than 10 times"


def text8_file(tmp_path: Path, text: str, gz: bool = False) -> Path:
    assert "\n" not in text
    return write(tmp_path / "text8" / "text8", text, gz)


def test_text8_two_way_split_and_count_rule(tmp_path: Path) -> None:
    # train: 'rare' once, 'ten' 10 times, 'the' and 'cat' 11 times each.
    train = "rare " + "ten " * 10 + "the cat " * 11
    valid = "the ten zebra cat"
    path = text8_file(tmp_path, train + valid, gz=True)
    c = data.read_text8(path, (len(train), len(valid)))
    # ids in order of first occurrence; <unk> takes its id where the first rare word occurs.
    assert c.vocab.itos == [data.UNK, "the", "cat"]
    assert c.train.tolist() == [0] * 11 + [1, 2] * 11
    assert c.valid.tolist() == [1, 0, 0, 2]  # 'ten' (10 times) and unseen 'zebra' -> <unk>
    assert c.test is None
    assert c.name == "text8" and c.source == str(tmp_path / "text8")

    lower = data.read_text8(path, (len(train), len(valid)), min_count=10)
    assert lower.vocab.itos == [data.UNK, "ten", "the", "cat"]


def test_text8_three_way_split_cuts_words_at_exact_offsets(tmp_path: Path) -> None:
    text = "abc de abc de abc"  # 17 characters
    path = text8_file(tmp_path, text)
    c = data.read_text8(path, (8, 5, 4), min_count=1)
    # pieces: "abc de a" | "bc de" | " abc": the word cut at offset 8 becomes 'a' + 'bc'.
    assert c.vocab.itos == ["abc", "de", "a", data.UNK]  # no rare word: <unk> goes last
    assert c.train.tolist() == [0, 1, 2]
    assert c.valid.tolist() == [3, 1]  # 'bc' never occurs in train
    assert c.test is not None and c.test.tolist() == [0]
    assert data.EOS not in c.vocab.stoi  # text8 has no lines, so no <eos>


def test_text8_bad_sizes_and_files(tmp_path: Path) -> None:
    path = text8_file(tmp_path, "a b c d")
    with pytest.raises(DataError) as e:
        data.read_text8(path, (4, 4))
    assert "has 7 characters" in one_line(e) and "needs exactly 8" in str(e.value)
    with pytest.raises(DataError) as e:
        data.read_text8(path, (7,))
    assert "2 or 3 positive" in one_line(e)
    # load_corpus uses the real protocol sizes, which a small file cannot meet.
    for split in data.TEXT8_SPLITS:
        with pytest.raises(DataError) as e:
            data.load_corpus("text8", tmp_path, text8_split=split)
        assert "needs exactly 100,000,000" in one_line(e)
    write(path, b"")
    with pytest.raises(DataError) as e:
        data.read_text8(path, (1, 1))
    assert "has 0 characters" in one_line(e)
    write(path, b"\xff\xfe a b")
    with pytest.raises(DataError) as e:
        data.read_text8(path, (3, 3))
    assert "not UTF-8" in one_line(e)


def test_text8_split_by_explicit_character_counts(tmp_path: Path) -> None:
    text8_file(tmp_path, " one two one two one")  # 20 characters
    c = data.load_corpus("text8", tmp_path, text8_split="12,8")  # " one two one" | " two one"
    assert (len(c.train), len(c.valid), c.test) == (3, 2, None)
    for bad in ("12", "12,x", "0,20", "1,2,3,4"):
        with pytest.raises(DataError) as e:
            data.load_corpus("text8", tmp_path, text8_split=bad)
        assert "N,M[,K]" in one_line(e)


def test_fetch_text8_zip(tmp_path: Path, server: tuple[Path, str]) -> None:
    www, base = server
    text = "one two one two one"
    make_zip(www / "text8.zip", {"text8": text})
    folder = data.fetch(
        "text8",
        tmp_path,
        url=f"{base}/text8.zip",
        progress=False,
        expected_sha256={"text8": sha(text)},
    )
    c = data.read_text8(folder / "text8", (12, 7), min_count=1)
    assert c.vocab.itos == ["one", "two", data.UNK]
    assert c.train.tolist() == [0, 1, 0] and c.valid.tolist() == [1, 0]


def test_cli_fetch_reports_a_checksum_mismatch_in_one_line(
    tmp_path: Path, simple_examples: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from tprop.cli import main

    root = tmp_path / "root"
    code = main(["data", "fetch", "ptb", "--data-dir", str(root), "--url", simple_examples])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "checksum mismatch" in err, err
    assert leftovers(root / "ptb") == []


# --------------------------------------------------------------------------- add (by hand)


PTB_PINS = {f"{s}.txt": sha(t) for s, t in PTB_TINY.items()}


def tiny_ptb_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the registry pin the tiny PTB files, for the CLI (which cannot pass pins)."""
    spec = dataclasses.replace(data.DATASETS["ptb"], sha256=PTB_PINS)
    monkeypatch.setitem(data.DATASETS, "ptb", spec)


def test_add_published_archive(
    tmp_path: Path, simple_examples: str, isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = tmp_path / "www" / "simple-examples.tgz"
    folder = data.add("ptb", archive, tmp_path / "root", expected_sha256=PTB_PINS)
    assert folder == tmp_path / "root" / "ptb"
    assert leftovers(folder) == ["test.txt", "train.txt", "valid.txt"]  # no temporary files
    assert (folder / "train.txt").read_text() == PTB_TINY["train"]
    assert len(data.load_corpus("ptb", tmp_path / "root").train) == 7

    pins = {f"{s}.txt": sha(t) for s, t in CHAR_TINY.items()}
    data.add("ptb-char", archive, expected_sha256=pins)  # no data_dir: into the cache
    assert leftovers(isolated_env / "ptb-char") == ["test.txt", "train.txt", "valid.txt"]
    monkeypatch.setenv(data.ENV_DATA_DIR, str(tmp_path / "env"))
    assert data.add("ptb-char", archive, expected_sha256=pins) == tmp_path / "env" / "ptb-char"


def test_add_with_real_pins_rejects_other_files_and_leaves_nothing(
    tmp_path: Path, simple_examples: str
) -> None:
    archive = tmp_path / "www" / "simple-examples.tgz"
    with pytest.raises(DataError) as e:
        data.add("ptb", archive, tmp_path / "root")
    msg = one_line(e)
    assert "checksum mismatch for train.txt" in msg and str(archive) in msg
    assert "nothing was written" in msg
    assert not (tmp_path / "root").exists()  # no empty folder either

    old = write(tmp_path / "kept" / "ptb" / "train.txt", "an older copy\n")
    with pytest.raises(DataError):
        data.add("ptb", archive, tmp_path / "kept")
    assert leftovers(old.parent) == ["train.txt"] and old.read_text() == "an older copy\n"


def test_add_folder_under_any_published_layout(tmp_path: Path, simple_examples: str) -> None:
    with tarfile.open(tmp_path / "www" / "simple-examples.tgz") as tf:
        tf.extractall(tmp_path / "x", filter="data")
    published = tmp_path / "x" / "simple-examples" / "data"  # ptb.train.txt, ...
    tprop_names = write_splits(tmp_path / "y", "ptb", PTB_TINY, gz=True)  # train.txt.gz, ...
    for i, source in enumerate(
        [tmp_path / "x", published.parent, published, tprop_names, tprop_names.parent]
    ):
        root = tmp_path / f"root{i}"
        assert data.add("ptb", source, root, expected_sha256=PTB_PINS) == root / "ptb"
        assert leftovers(root / "ptb") == ["test.txt", "train.txt", "valid.txt"], source
        assert (root / "ptb" / "test.txt").read_text() == PTB_TINY["test"]


def test_add_reports_what_is_missing_and_leaves_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    folder = write(tmp_path / "dl" / "ptb.train.txt", PTB_TINY["train"]).parent
    cases = [
        (folder, f"has {folder / 'ptb.train.txt'} but not {folder / 'ptb.valid.txt'}"),
        (tmp_path / "root", "does not exist"),
        (write(tmp_path / "empty" / "README", "x\n").parent, "holds no ptb files"),
        (write(tmp_path / "page.html", "<html>moved</html>"), "is not a zip or tar archive"),
    ]
    for source, needle in cases:
        with pytest.raises(DataError) as e:
            data.add("ptb", source, root, expected_sha256=PTB_PINS)
        assert needle in one_line(e), source
        assert not root.exists()
    with pytest.raises(DataError) as e:
        data.add("ptb", folder, root)
    assert "ptb.valid.txt" in one_line(e)


def test_add_wikitext103_checks_the_published_archive_md5(tmp_path: Path) -> None:
    texts = {"train": "a b\n", "valid": "a\n", "test": "b\n"}
    make_zip(tmp_path / "w.zip", {f"wikitext-103/wiki.{s}.tokens": t for s, t in texts.items()})
    with pytest.raises(DataError) as e:  # not the published zip: its md5 differs
        data.add("wikitext-103", tmp_path / "w.zip", tmp_path / "root")
    assert "9ddaacaf6af0710eda8c456decff7832" in one_line(e) and "add the folder" in str(e.value)
    assert not (tmp_path / "root").exists()
    # Extracted files have no pinned checksum: they are installed, and verify says "unknown".
    for split, text in texts.items():
        write(tmp_path / "wt" / f"wiki.{split}.tokens", text)
    data.add("wikitext-103", tmp_path / "wt", tmp_path / "root")
    assert [ok for _, _, ok in data.verify("wikitext-103", tmp_path / "root")] == [None] * 3


def test_add_text8_from_the_bare_file(tmp_path: Path) -> None:
    raw = write(tmp_path / "dl" / "text8", "one two one two one")
    pins = {"text8": sha("one two one two one")}
    folder = data.add("text8", raw, tmp_path / "root", expected_sha256=pins)
    assert (folder / "text8").read_text() == "one two one two one"
    with pytest.raises(DataError) as e:  # the real pin
        data.add("text8", raw, tmp_path / "other")
    assert "checksum mismatch for text8" in one_line(e) and not (tmp_path / "other").exists()


def test_add_real_ptb_from_a_folder(shared: Path, tmp_path: Path) -> None:
    data.add("ptb", shared / "ptb", tmp_path)  # tprop's names, gzip: checked against real pins
    assert leftovers(tmp_path / "ptb") == ["test.txt", "train.txt", "valid.txt"]
    assert all(ok for _, _, ok in data.verify("ptb", tmp_path))
    assert len(data.load_corpus("ptb", tmp_path).train) == 929_589


def test_fetch_failure_leaves_no_folder_and_names_add(
    tmp_path: Path, server: tuple[Path, str]
) -> None:
    _, base = server
    root = tmp_path / "new" / "root"
    with pytest.raises(DataError) as e:
        data.fetch("ptb", root, url=f"{base}/missing.tgz", progress=False)
    msg = one_line(e)
    assert f"tprop data add ptb PATH --data-dir {root}" in msg
    assert not (tmp_path / "new").exists()

    local = write(tmp_path / "simple-examples.tgz", b"")
    with pytest.raises(DataError) as e:  # a plain path is not an address: say what works
        data.fetch("ptb", url=str(local), progress=False)
    assert f"tprop data add ptb {local}" in one_line(e)


# --------------------------------------------------------------------------- the CLI


def test_cli_add_then_list(
    tmp_path: Path,
    simple_examples: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from tprop.cli import main

    archive = tmp_path / "www" / "simple-examples.tgz"
    root = tmp_path / "root"
    assert main(["data", "add", "ptb", str(archive), "--data-dir", str(root)]) == 2  # real pins
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "checksum mismatch" in err and not root.exists(), err

    tiny_ptb_spec(monkeypatch)
    assert main(["data", "add", "ptb", str(archive), "--data-dir", str(root)]) == 0
    out = capsys.readouterr().out
    assert f"installed in {root / 'ptb'} (sha256 verified)" in out
    assert f"tprop data add ptb-char {archive} --data-dir {root}" in out  # same archive

    assert main(["data", "list", "--data-dir", str(root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["dataset", "train", "size", "licence", "status"]
    rows = {line.split()[0]: line for line in lines[1:6]}
    assert list(rows) == list(data.DATASETS)
    assert rows["ptb"].endswith(f"present: {root / 'ptb'}") and "929,589 tokens" in rows["ptb"]
    assert rows["wikitext-2"].endswith("missing")  # --data-dir is the only place looked in
    assert f"tprop data add NAME PATH --data-dir {root}" in " ".join(lines)
    assert all(len(line.replace(str(root), "DIR")) <= 100 for line in lines), lines  # but paths
    assert "None" not in "\n".join(lines) and "s3.amazonaws" not in "\n".join(lines)


def test_cli_list_without_data_dir(capsys: pytest.CaptureFixture[str]) -> None:
    from tprop.cli import main

    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert f"shipped: {data.package_data_dir() / 'wikitext-2'}" in out
    assert "missing: tprop data fetch ptb" in out and "tprop data add NAME PATH" in out
    assert "$TPROP_DATA_DIR (not set)" in out


def test_cli_help_and_choices_come_from_the_registry(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tprop.cli import main

    toy = dataclasses.replace(data.DATASETS["ptb"], name="toy")
    monkeypatch.setitem(data.DATASETS, "toy", toy)
    for command in ("fetch", "add", "verify", "list"):
        assert main(["data", command, "--help"]) == 0
        out = capsys.readouterr().out
        assert "target folder" not in out
        if command != "list":
            assert "ptb, ptb-char, wikitext-2, wikitext-103, text8, toy" in out
    code = main(["data", "fetch", "imdb"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "invalid choice: 'imdb'" in err, err


def test_cli_train_with_data_dir_does_not_fall_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tprop.cli import main

    code = main(["train", "--dataset", "wikitext-2", "--data-dir", str(tmp_path / "none"),
                 "--out", str(tmp_path / "run"), "--epochs", "1"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and str(tmp_path / "none") in err, err
    assert "tprop data add wikitext-2 PATH --data-dir" in err


def test_importing_the_registry_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys; from tprop.data import DATASETS, DataError, resolve_dir; "
        "import tprop.data.commands; assert 'torch' not in sys.modules, 'torch imported'; "
        "from tprop.data import load_corpus, fetch; assert callable(fetch)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_atomic_write_leaves_the_old_file_on_failure(tmp_path: Path) -> None:
    from tprop import fileio

    target = write(tmp_path / "f.txt", "old")

    def fail(fh: object) -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        fileio.atomic_write(target, fail)
    assert leftovers(tmp_path) == ["f.txt"] and target.read_text() == "old"
    fileio.atomic_write(target, lambda fh: fh.write(b"new"))
    assert leftovers(tmp_path) == ["f.txt"] and target.read_text() == "new"
