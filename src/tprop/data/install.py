"""Getting dataset files onto disk: download them (`fetch`), install a local copy (`add`), and
check the files in use against their pinned sha256 (`verify`).

`fetch` and `add` share one path: the dataset's files are copied out of an archive (or a folder)
into temporary files inside `<root>/<name>/`, each raw sha256 is checked against its pin, and
only then are they renamed into place (`tprop.fileio.commit`). On any failure nothing new is left
behind: no temporary file, and no folder that was not there before. Files are stored
uncompressed.

Downloads use urllib rather than `torch.hub.download_url_to_file`: that helper has no timeout (a
stalled server hangs forever), always sends the User-Agent "torch.hub" (the WikiText mirror
refuses some agents), does not notice a download cut short of its Content-Length, and checks
one sha256 prefix of the whole download, whereas the pins here are per extracted file.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tarfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from tqdm import tqdm

from tprop import fileio
from tprop.data.corpus import open_binary, reading
from tprop.data.registry import DataError, DatasetSpec, present, resolve_dir, spec, write_root

_READ_BYTES = 1 << 20
_TIMEOUT_S = 60.0
# Some hosts (wikitext.smerity.com) refuse urllib's default "Python-urllib/x.y" agent.
_USER_AGENT = "tprop (research code; dataset fetch)"

Staged = dict[str, tuple[Path, str]]
"""File name -> (temporary file holding it, sha256 of its raw content)."""


# --------------------------------------------------------------------------- checksums


def _sha256_raw(path: Path, name: str) -> str:
    """sha256 of the raw content: the decompressed bytes for a .gz file."""
    digest = hashlib.sha256()
    with reading(path, name), open_binary(path) as f:
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
    ds = spec(name)
    folder = resolve_dir(name, data_dir)
    rows = []
    for fname in ds.files:
        path = present(folder, fname)
        assert path is not None
        found = _sha256_raw(path, name)
        pin = ds.sha256.get(fname)
        rows.append((str(path), found, None if pin is None else found == pin))
    return rows


# --------------------------------------------------------------------------- staging


@contextmanager
def _staging(folder: Path, name: str) -> Iterator[list[Path]]:
    """Create `folder` if needed and collect temporary files in the list this yields.

    On leaving, every temporary file still there is removed; on failure, so are the folders
    this created (if still empty). A local OSError becomes a one-line DataError.
    """
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(
            f"{name}: cannot create {folder}: {e.strerror or e}; pass --data-dir DIR"
        ) from e
    temps: list[Path] = []
    done = False
    try:
        yield temps
        done = True
    except OSError as e:  # the network ones are DataErrors already
        where = Path(e.filename) if e.filename else folder
        verb = "write into" if folder in (where, *where.parents) else "read"
        raise DataError(f"{name}: cannot {verb} {where}: {e.strerror or e}") from e
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        for created in missing if not done else ():
            try:
                created.rmdir()
            except OSError:
                break  # not empty (someone else wrote there) or not ours to remove


def _copy_hashed(
    src: IO[bytes], folder: Path, fname: str, temps: list[Path], name: str
) -> tuple[Path, str]:
    """Copy `src` into a new temporary file in `folder`; returns it and the sha256 copied.

    An OSError while writing is a DataError here; one while reading `src` is left to the caller,
    which knows what `src` is.
    """
    digest = hashlib.sha256()
    in_read = False
    try:
        with fileio.temp_file(folder, prefix=f".{fname}.", suffix=".part") as (tmp, out):
            temps.append(tmp)
            while True:
                in_read = True
                block = src.read(_READ_BYTES)
                in_read = False
                if not block:
                    break
                digest.update(block)
                out.write(block)
    except OSError as e:
        if in_read:
            raise
        raise DataError(f"{name}: cannot write into {folder}: {e.strerror or e}") from e
    return tmp, digest.hexdigest()


def _commit(ds: DatasetSpec, folder: Path, staged: Staged, pins: Mapping, origin: str) -> None:
    """Rename the staged files into `folder` if every pinned sha256 matches; else raise."""
    for fname, (_, digest) in staged.items():
        pin = pins.get(fname)
        if pin is not None and digest != pin:
            raise DataError(
                f"{ds.name}: checksum mismatch for {fname} from {origin}: sha256 {digest}, "
                f"expected {pin}; nothing was written; the file is corrupt or differs from the "
                f"published copy"
            )
    fileio.commit((tmp, folder / fname) for fname, (tmp, _) in staged.items())


# --------------------------------------------------------------------------- archives


def _layouts(member: str) -> list[str]:
    """'a/b/c.txt' -> ['a/b/c.txt', 'b/c.txt', 'c.txt']: the member's path as seen from the
    archive's top, from each folder inside it, and as a bare published file name."""
    parts = member.split("/")
    return ["/".join(parts[i:]) for i in range(len(parts))]


def _md5(path: Path) -> str:
    md5 = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(_READ_BYTES):
            md5.update(block)
    return md5.hexdigest()


@contextmanager
def _archive(path: Path, name: str, origin: str, hint: str) -> Iterator[tuple[list, Callable]]:
    """The entry names of a zip or tar file and a function opening one (None if not a file)."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                yield zf.namelist(), zf.open
        elif tarfile.is_tarfile(path):
            with tarfile.open(path, "r:*") as tf:
                yield tf.getnames(), tf.extractfile
        else:
            raise DataError(f"{name}: {origin} is not a zip or tar archive; {hint}")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as e:
        raise DataError(f"{name}: the archive {origin} is corrupt ({e}); {hint}") from e


def _extract(
    archive: Path, ds: DatasetSpec, folder: Path, temps: list[Path], origin: str, hint: str
) -> Staged:
    """Copy the dataset's members out of `archive` into temporary files in `folder`.

    A member is found under its published path (a leading './' is ignored) or, for archives
    packed differently, under the tail of that path (e.g. just 'ptb.train.txt').
    """
    staged: Staged = {}
    with _archive(archive, ds.name, origin, hint) as (entries, open_entry):
        by_path = {entry.removeprefix("./"): entry for entry in entries}
        for member, fname in ds.members.items():
            entry = next((by_path[p] for p in _layouts(member) if p in by_path), None)
            src = open_entry(entry) if entry is not None else None
            if src is None:  # absent, or not a regular file
                raise DataError(f"{ds.name}: the archive {origin} has no member {member}; {hint}")
            with src:
                staged[fname] = _copy_hashed(src, folder, fname, temps, ds.name)
    return staged


# --------------------------------------------------------------------------- downloading


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


def _download_first(urls: Sequence[str], dest: Path, name: str, progress: bool, hint: str) -> str:
    """Download the first of `urls` that works into `dest`; returns the one used."""
    failures = []
    for url in urls:
        try:
            _download(url, dest, name, progress)
            return url
        except (OSError, ValueError, http.client.HTTPException) as e:  # URLError is an OSError
            failures.append(f"{url}: {_describe_failure(e)}")
    raise DataError(f"{name}: download failed ({'; '.join(failures)}); {hint}")


def _with_dir(command: str, data_dir: str | os.PathLike | None) -> str:
    return command if data_dir is None else f"{command} --data-dir {data_dir}"


def fetch(
    name: str,
    data_dir: str | os.PathLike | None = None,
    url: str | None = None,
    progress: bool = True,
    expected_sha256: Mapping[str, str | None] | None = None,
) -> Path:
    """Download dataset `name`, check it and put its files in `<root>/<name>/`; returns the folder.

    The root is `data_dir`, else `$TPROP_DATA_DIR`, else the user cache. The archive comes from
    `url` (default: the canonical address, then its mirrors; there the published archive md5 is
    also checked, where there is one). Every raw sha256 must match its pin (`expected_sha256`,
    default the dataset's pins; None entries are not checked). See the module docstring for what
    a failure leaves behind: nothing.
    """
    ds = spec(name)
    pins = dict(ds.sha256 if expected_sha256 is None else expected_sha256)
    if url and "://" not in url and Path(url).expanduser().exists():
        raise DataError(
            f"{name}: --url takes an address (http://, https://, file://) and {url} is a local "
            f"path; install it with `{_with_dir(f'tprop data add {name} {url}', data_dir)}`"
        )
    folder = write_root(data_dir) / name
    by_hand = _with_dir(f"tprop data add {name} PATH", data_dir)
    # Mirrors first: where there is one, the canonical address is the one known to fail.
    hint = (
        f"check the network or pass --url with another address of the archive; or download "
        f"{ds.archive_name} by hand ({' or '.join([*ds.mirrors, ds.url])}) and run `{by_hand}`"
    )
    with _staging(folder, name) as temps:
        with fileio.temp_file(folder, prefix=".download.", suffix=".part") as (archive, _):
            temps.append(archive)
        used = _download_first(
            [url] if url else [ds.url, *ds.mirrors], archive, name, progress, hint
        )
        if url is None and ds.archive_md5 is not None and _md5(archive) != ds.archive_md5:
            raise DataError(
                f"{name}: the archive from {used} has md5 {_md5(archive)}, expected "
                f"{ds.archive_md5}; nothing was written; try again later"
            )
        staged = _extract(archive, ds, folder, temps, f"from {used}", "is the URL right?")
        _commit(ds, folder, staged, pins, used)
    return folder


# --------------------------------------------------------------------------- adding by hand


def _folder_layouts(ds: DatasetSpec, source: Path) -> list[list[Path]]:
    """Where a folder may hold the files, one list (in `ds.files` order) per naming scheme:
    tprop's names (also inside `<name>/`), then the archive's layout from each depth down to the
    bare published names (e.g. 'ptb.train.txt', 'wiki.train.tokens')."""
    by_file = {fname: member for member, fname in ds.members.items()}
    schemes = [[source / f for f in ds.files], [source / ds.name / f for f in ds.files]]
    tails = {f: _layouts(by_file[f]) for f in ds.files}
    for k in range(max(map(len, tails.values()))):
        schemes.append([source / tails[f][min(k, len(tails[f]) - 1)] for f in ds.files])
    return schemes


def _find_in_folder(ds: DatasetSpec, source: Path) -> list[Path]:
    """The dataset's files in `source` under one naming scheme (plain or .gz), or a DataError."""
    best: list[tuple[Path, Path | None]] = []
    for scheme in _folder_layouts(ds, source):
        found = [(p, present(p.parent, p.name)) for p in scheme]
        if all(f is not None for _, f in found):
            return [f for _, f in found]  # type: ignore[misc]
        if sum(f is not None for _, f in found) > sum(f is not None for _, f in best):
            best = found
    if best:
        has = ", ".join(str(f) for _, f in best if f is not None)
        missing = ", ".join(str(p) for p, f in best if f is None)
        raise DataError(
            f"{ds.name}: {source} has {has} but not {missing} (plain or .gz); add the missing "
            f"files, or pass the archive {ds.archive_name} itself"
        )
    published = ", ".join(m.rsplit("/", 1)[-1] for m in ds.members)
    raise DataError(
        f"{ds.name}: {source} holds no {ds.name} files: looked for the published names "
        f"{published} (also under the archive's folders) and tprop's names "
        f"{', '.join(ds.files)}, plain or .gz; pass the folder that holds them, or the archive "
        f"{ds.archive_name} itself"
    )


def add(
    name: str,
    path: str | os.PathLike,
    data_dir: str | os.PathLike | None = None,
    expected_sha256: Mapping[str, str | None] | None = None,
) -> Path:
    """Install dataset `name` from a local copy into `<root>/<name>/`; returns the folder.

    `path` is the published archive (any zip or tar, e.g. simple-examples.tgz), a folder holding
    the files under their published names, the archive's layout or tprop's names, or, for a
    one-file dataset (text8), the file itself. The checks and the root are those of `fetch`,
    including the published archive md5 where there is one.
    """
    ds = spec(name)
    pins = dict(ds.sha256 if expected_sha256 is None else expected_sha256)
    source = Path(path).expanduser()
    if not source.exists():
        raise DataError(f"{name}: {source} does not exist; pass the archive or folder to add")
    files: list[Path] = []
    is_archive = source.is_file() and (zipfile.is_zipfile(source) or tarfile.is_tarfile(source))
    if source.is_dir():
        files = _find_in_folder(ds, source)
    elif not is_archive and len(ds.files) == 1:
        files = [source]
    elif not is_archive:
        raise DataError(
            f"{name}: {source} is not a zip or tar archive; pass the archive {ds.archive_name} "
            f"as published, or a folder holding the files"
        )
    if is_archive and ds.archive_md5 is not None and _md5(source) != ds.archive_md5:
        raise DataError(
            f"{name}: {source} has md5 {_md5(source)}, not the published {ds.archive_md5} of "
            f"{ds.archive_name}; use the published archive, or extract it and add the folder"
        )
    folder = write_root(data_dir) / name
    with _staging(folder, name) as temps:
        if is_archive:
            hint = f"is it {ds.archive_name}?"
            staged = _extract(source, ds, folder, temps, str(source), hint)
        else:
            staged = {}
            for fname, src in zip(ds.files, files, strict=True):
                with reading(src, name), open_binary(src) as f:
                    staged[fname] = _copy_hashed(f, folder, fname, temps, name)
        _commit(ds, folder, staged, pins, str(source))
    return folder
