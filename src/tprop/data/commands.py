"""`tprop data list | fetch | add | verify`: plugged into the CLI through `cli.PLUGGED`."""

from __future__ import annotations

import argparse
import os
import sys
import textwrap

from tprop.data.registry import DATASETS, ENV_DATA_DIR, cache_dir, describe, package_data_dir


def _esc(text: str) -> str:
    return text.replace("%", "%%")  # argparse %-formats help strings


def add_parser(sub: argparse._SubParsersAction) -> None:
    names = ", ".join(DATASETS)
    cache = _esc(str(cache_dir()))
    d = sub.add_parser(
        "data",
        help="list, fetch, add or verify datasets",
        description=f"Datasets: {names}. A dataset's files live in ROOT/NAME/. With --data-dir, "
        f"DIR is the only root; without it, ${ENV_DATA_DIR}, then the user cache ({cache}), "
        "then (wikitext-2) the copy shipped in the package.",
    )
    d.set_defaults(handler=run)
    dsub = d.add_subparsers(dest="data_command", required=True, parser_class=type(d))
    read_default = f"default: ${ENV_DATA_DIR}, then {cache}, then the shipped copy"
    write_default = f"default: ${ENV_DATA_DIR} if set, else {cache}"
    name_help = f"dataset: {names}"

    q = dsub.add_parser("list", help="each dataset: size, licence, whether present and where")
    q.add_argument("--data-dir", metavar="DIR", help=f"look only in DIR/NAME/ ({read_default})")

    q = dsub.add_parser(
        "fetch", help="download a dataset, check its sha256 and install it into DIR/NAME/"
    )
    q.add_argument("name", choices=list(DATASETS), metavar="NAME", help=name_help)
    q.add_argument("--data-dir", metavar="DIR", help=f"install into DIR/NAME/ ({write_default})")
    q.add_argument(
        "--url",
        help="download the archive from this address (http://, https:// or file://) instead of "
        "the published one and its mirrors [default: the published address]",
    )

    q = dsub.add_parser(
        "add",
        help="install a dataset obtained by hand (archive or folder), checking its sha256",
        description="Install NAME from PATH: the archive as published (e.g. simple-examples.tgz, "
        "wikitext-2-v1.zip, text8.zip), or a folder holding its files under their published "
        "names (ptb.train.txt, wiki.train.tokens, ...), in the archive's layout, or under "
        "tprop's names (train.txt, ...; plain or .gz). Nothing is written unless every pinned "
        "checksum matches.",
    )
    q.add_argument("name", choices=list(DATASETS), metavar="NAME", help=name_help)
    q.add_argument("path", metavar="PATH", help="the downloaded archive, or a folder of files")
    q.add_argument("--data-dir", metavar="DIR", help=f"install into DIR/NAME/ ({write_default})")

    q = dsub.add_parser(
        "verify", help="compare the sha256 of the files training would read with the pinned ones"
    )
    q.add_argument("name", choices=list(DATASETS), metavar="NAME", help=name_help)
    q.add_argument("--data-dir", metavar="DIR", help=f"check only DIR/NAME/ ({read_default})")


def _status(row: dict, named_dir: bool) -> str:
    if row["problem"]:
        return "INCOMPLETE (see below)"
    if row["where"] is None:  # with --data-dir the footer gives the command with it
        return "missing" if named_dir else f"missing: tprop data fetch {row['name']}"
    shipped = row["where"] == str(package_data_dir() / row["name"])
    return f"{'shipped' if shipped else 'present'}: {row['where']}"


def table(data_dir: str | os.PathLike | None = None) -> list[str]:
    """The lines `tprop data list` prints."""
    rows = describe(data_dir)
    head = ("dataset", "train size", "licence", "status")
    body = [
        (r["name"], r["train_size"], r["licence_short"], _status(r, data_dir is not None))
        for r in rows
    ]
    w = [max(len(line[i]) for line in (head, *body)) for i in range(3)]
    lines = [f"{a:<{w[0]}}  {b:>{w[1]}}  {c:<{w[2]}}  {d}".rstrip() for a, b, c, d in (head, *body)]
    lines += [r["problem"] for r in rows if r["problem"]]
    opt = "" if data_dir is None else f" --data-dir {data_dir}"
    if data_dir is not None:
        where = f"Looked only in {data_dir} (--data-dir)."
    else:
        env = os.environ.get(ENV_DATA_DIR) or "not set"
        where = f"Looked in ${ENV_DATA_DIR} ({env}), then {cache_dir()}, then the shipped copy."
    how = (
        f"Missing: `tprop data fetch NAME{opt}` downloads it; without network, download the "
        f"archive by hand and run `tprop data add NAME PATH{opt}` (the archive, or a folder "
        "of its files)."
    )
    wrap = dict(width=100, break_long_words=False, break_on_hyphens=False)
    return lines + textwrap.wrap(where, **wrap) + textwrap.wrap(how, **wrap)


def run(ns: argparse.Namespace) -> int:
    """Carry out one `tprop data` subcommand; returns the exit code."""
    from tprop.data import install

    if ns.data_command == "list":
        print("\n".join(table(ns.data_dir)))
        return 0
    if ns.data_command == "verify":
        rows = install.verify(ns.name, ns.data_dir)
        for file, digest, ok in rows:
            mark = {True: "ok ", False: "BAD", None: "no pinned checksum:"}[ok]
            print(f"{mark} {digest} {file}")
        bad = sum(ok is False for _, _, ok in rows)
        if bad:
            print(
                f"tprop: error: {bad} file(s) of {ns.name} do not match their pinned sha256; "
                f"replace them: `tprop data fetch {ns.name}` or `tprop data add {ns.name} PATH`",
                file=sys.stderr,
            )
            return 2
        return 0
    if ns.data_command == "fetch":
        folder = install.fetch(ns.name, ns.data_dir, url=ns.url)
    else:
        folder = install.add(ns.name, ns.path, ns.data_dir)
    ds = DATASETS[ns.name]
    checked = "sha256 verified" if all(ds.sha256.values()) else "no pinned sha256 to check"
    print(f"{ns.name}: {', '.join(ds.files)} installed in {folder} ({checked})")
    others = [n for n, s in DATASETS.items() if s.url == ds.url and n != ns.name]
    if ns.data_command == "add" and others and os.path.isfile(ns.path):
        more = f"tprop data add {others[0]} {ns.path}"
        more += f" --data-dir {ns.data_dir}" if ns.data_dir else ""
        print(f"The same archive also holds {', '.join(others)}: `{more}`")
    return 0
