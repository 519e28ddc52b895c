"""Which datasets exist, where their files come from, and where tprop looks for them.

This module imports neither torch nor numpy, so `tprop.config` and the CLI can read dataset names
(`DATASETS`) cheaply. Provenance, checksums and licences are documented in docs/datasets.md.

Data roots (written once, in `data_roots`): a folder named by the caller (`data_dir`,
`--data-dir`) is the only place looked in; with none named, `$TPROP_DATA_DIR`, then the user
cache, then (wikitext-2 only) the copy shipped in the package. A dataset's files live in
`<root>/<name>/`; new files are written into the first root.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

SPLITS = ("train", "valid", "test")

ENV_DATA_DIR = "TPROP_DATA_DIR"
"""Environment variable naming a data root; used when no `data_dir` is passed."""


class DataError(Exception):
    """A user-facing data problem; str(e) is ONE line naming the problem and the fix."""

    def __init__(self, message: str) -> None:
        # One line, always: the CLI prints str(e) as the whole error report.
        super().__init__(" ".join(message.splitlines()))


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
    licence_short: str = ""
    """A few words for `tprop data list`."""
    train_size: str = ""
    """Published size of the train split, e.g. '929,589 tokens' (with one <eos> per line)."""
    shipped: bool = False
    """True if a copy ships inside the package (the last place `resolve_dir` looks)."""
    mirrors: tuple[str, ...] = ()
    """Addresses tried in order when `url` fails; the raw checksums guard them like `url`."""
    archive_md5: str | None = None
    """Published md5 of the archive itself, checked when it comes from `url` or a mirror, or is
    added by hand; the only integrity check for datasets without raw checksums."""

    @property
    def archive_name(self) -> str:
        """File name of the published archive, e.g. 'simple-examples.tgz'."""
        return self.url.rsplit("/", 1)[-1]


def _lines_spec(
    name: str,
    ext: str,
    member_of: Mapping[str, str],
    sha256: Mapping[str, str | None],
    **kw: object,
) -> DatasetSpec:
    return DatasetSpec(
        name=name,
        kind="lines",
        files=tuple(f"{split}.{ext}" for split in SPLITS),
        members={member_of[split]: f"{split}.{ext}" for split in SPLITS},
        sha256={f"{split}.{ext}": sha256[split] for split in SPLITS},
        **kw,  # type: ignore[arg-type]
    )


_PTB_URL = "http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz"
_PTB_LICENCE = dict(
    licence="Penn Treebank (LDC99T42, LDC licence) derivative; redistribution terms unclear: "
    "research use only, not shipped",
    licence_short="LDC; research use only",
)
_WIKITEXT_LICENCE = dict(
    licence="CC BY-SA 3.0 (Wikipedia text; Merity et al. 2016)", licence_short="CC BY-SA 3.0"
)
# The Salesforce S3 bucket has answered 403 since 2024 (pytorch/text#2255); the dataset's author
# serves the same archives at wikitext.smerity.com (its ETag for wikitext-103-v1.zip equals the
# md5 that torchtext pins for the S3 copy).
_WIKITEXT_S3 = "https://s3.amazonaws.com/research.metamind.io/wikitext/"
_WIKITEXT_MIRROR = "https://wikitext.smerity.com/"

# Pins and counts: docs/datasets.md says where each comes from.
DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        _lines_spec(
            "ptb",
            "txt",
            {s: f"simple-examples/data/ptb.{s}.txt" for s in SPLITS},
            {  # their md5s also equal torchtext's pins
                "train": "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
                "valid": "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
                "test": "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
            },
            title="Penn Treebank, Mikolov's 10k-vocabulary word-level version",
            url=_PTB_URL,
            train_size="929,589 tokens",
            **_PTB_LICENCE,
        ),
        _lines_spec(
            "ptb-char",
            "txt",
            {s: f"simple-examples/data/ptb.char.{s}.txt" for s in SPLITS},
            {
                "train": "e313d91425e06c4f0a8fb6e881dcce0c291f2a0e9f4dda54833069b122f91da9",
                "valid": "21661f63ec355085879458b6524644d4add5573541b4be14fb52ab2e2e995eb8",
                "test": "1ef5607ac3c463b16e38bfe7900dd3bfc91de5a96e0f21e7eab5188b465b8ebe",
            },
            title="Penn Treebank, Mikolov's character-level version ('_' marks word boundaries)",
            url=_PTB_URL,
            train_size="5,017,482 tokens",
            **_PTB_LICENCE,
        ),
        _lines_spec(
            "wikitext-2",
            "tokens",
            {s: f"wikitext-2/wiki.{s}.tokens" for s in SPLITS},
            {  # the pytorch/examples copy; its counts match the published ones
                "train": "9e9fa1ad55b1c2c95b08e37dd8e653f638fac2c6de904b79e813611eefbc985f",
                "valid": "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8",
                "test": "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0",
            },
            title="WikiText-2 (v1, tokenised)",
            url=_WIKITEXT_S3 + "wikitext-2-v1.zip",
            mirrors=(_WIKITEXT_MIRROR + "wikitext-2-v1.zip",),
            train_size="2,088,628 tokens",
            shipped=True,
            **_WIKITEXT_LICENCE,
        ),
        _lines_spec(
            "wikitext-103",
            "tokens",
            {s: f"wikitext-103/wiki.{s}.tokens" for s in SPLITS},
            {s: None for s in SPLITS},  # no published sha256 of the extracted files was found
            title="WikiText-103 (v1, tokenised)",
            url=_WIKITEXT_S3 + "wikitext-103-v1.zip",
            mirrors=(_WIKITEXT_MIRROR + "wikitext-103-v1.zip",),
            archive_md5="9ddaacaf6af0710eda8c456decff7832",  # torchtext's wikitext103.py
            train_size="103,227,021 tokens",
            **_WIKITEXT_LICENCE,
        ),
        DatasetSpec(
            name="text8",
            title="text8 (first 10^8 characters of cleaned English Wikipedia), word level",
            kind="text8",
            files=("text8",),
            url="http://mattmahoney.net/dc/text8.zip",
            members={"text8": "text8"},
            # Published by several independent public repositories for the extracted
            # 100,000,000-byte file; not re-checked here (no copy of text8 was available).
            sha256={"text8": "6e890197040d37d85beb962ae1f041ff1d9a9ca8d20c7d99c85027eebf51dca7"},
            licence="Wikipedia text (CC BY-SA / GFDL), prepared by Matt Mahoney",
            licence_short="CC BY-SA / GFDL",
            train_size="99,000,000 chars",
        ),
    )
}


def spec(name: str) -> DatasetSpec:
    """The registry entry for `name`, or a DataError listing the names there are."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


# --------------------------------------------------------------------------- where files live


def cache_dir() -> Path:
    """The user cache root: `$XDG_CACHE_HOME/tprop`, else `~/.cache/tprop`."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "tprop"


def package_data_dir() -> Path:
    """Root of the copies shipped inside the package (WikiText-2 only)."""
    return Path(__file__).resolve().parent.parent / "datasets"


def data_roots(data_dir: str | os.PathLike | None, ds: DatasetSpec | None = None) -> list[Path]:
    """The roots looked in, in order; the first one is where `fetch` and `add` write.

    A `data_dir` the caller names is authoritative: it is the only root, so a run never
    silently reads another copy than the one asked for. Otherwise: `$TPROP_DATA_DIR` (if set),
    the user cache, and, for a dataset that ships with the package, the shipped copy.
    """
    if data_dir is not None:
        return [Path(data_dir).expanduser()]
    roots = []
    if os.environ.get(ENV_DATA_DIR):
        roots.append(Path(os.environ[ENV_DATA_DIR]).expanduser())
    roots.append(cache_dir())
    if ds is not None and ds.shipped:
        roots.append(package_data_dir())
    return roots


def write_root(data_dir: str | os.PathLike | None) -> Path:
    """Where `fetch` and `add` install files: the first data root (never the package)."""
    return data_roots(data_dir)[0]


def present(folder: Path, fname: str) -> Path | None:
    """`folder/fname`, else `folder/fname.gz`, else None (a plain file wins over its .gz)."""
    for path in (folder / fname, folder / f"{fname}.gz"):
        if path.is_file():
            return path
    return None


def locate(ds: DatasetSpec, data_dir: str | os.PathLike | None) -> tuple[Path | None, list[Path]]:
    """The first `<root>/<name>` folder holding every file (or None), and the folders looked in.

    A folder holding only some of the files is an error rather than a reason to look further:
    mixing splits from two copies would silently give wrong numbers.
    """
    looked = []
    for root in data_roots(data_dir, ds):
        folder = root / ds.name
        looked.append(folder)
        found = [f for f in ds.files if present(folder, f) is not None]
        if len(found) == len(ds.files):
            return folder, looked
        if found:
            missing = [f for f in ds.files if f not in found]
            raise DataError(
                f"{ds.name}: {folder} has {', '.join(found)} but not {', '.join(missing)} "
                f"(plain or .gz); add the missing files or run `tprop data fetch {ds.name}`"
            )
    return None, looked


def resolve_dir(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """The folder `<root>/<name>` that `load_corpus(name, data_dir)` reads.

    With `data_dir`, only `data_dir/<name>` is used; without, the first of `$TPROP_DATA_DIR`,
    the user cache and (wikitext-2 only) the shipped copy whose `<name>/` holds every file.
    """
    ds = spec(name)
    folder, looked = locate(ds, data_dir)
    if folder is not None:
        return folder
    wanted = f"{', '.join(ds.files)} (plain or .gz)"
    if data_dir is not None:
        root = looked[0].parent
        raise DataError(
            f"{name}: the data folder {root} (--data-dir) does not hold {name}: no {wanted} in "
            f"{looked[0]}; put them there with `tprop data fetch {name} --data-dir {root}` or "
            f"`tprop data add {name} PATH --data-dir {root}`, or drop --data-dir to use "
            f"${ENV_DATA_DIR} or the cache"
        )
    raise DataError(
        f"{name}: data files not found; looked for {wanted} in {', '.join(map(str, looked))}; "
        f"run `tprop data fetch {name}` (downloads into {looked[0]}), or, with the archive "
        f"downloaded by hand, `tprop data add {name} PATH`; or pass --data-dir DIR with the "
        f"files in DIR/{name}/"
    )


def describe(data_dir: str | os.PathLike | None = None) -> list[dict]:
    """One row per dataset for `tprop data list`.

    Keys: name, title, train_size, licence, licence_short, url, shipped, pinned (whether every
    file has a pinned sha256), where (folder the files would be read from, or None), files
    (their paths), problem (why they cannot be read, or None), looked (the folders looked in).
    """
    rows = []
    for name, ds in DATASETS.items():
        problem, looked = None, [root / name for root in data_roots(data_dir, ds)]
        try:
            folder, looked = locate(ds, data_dir)
        except DataError as e:
            folder, problem = None, str(e)
        files = [str(present(folder, f)) for f in ds.files] if folder is not None else []
        rows.append(
            {
                "name": name,
                "title": ds.title,
                "train_size": ds.train_size,
                "licence": ds.licence,
                "licence_short": ds.licence_short,
                "url": ds.url,
                "shipped": ds.shipped,
                "pinned": all(ds.sha256.get(f) is not None for f in ds.files),
                "where": str(folder) if folder is not None else None,
                "files": files,
                "problem": problem,
                "looked": [str(p) for p in looked],
            }
        )
    return rows
