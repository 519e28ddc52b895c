"""A run records the code it ran: the git commit in a checkout, $TPROP_GIT_COMMIT in a copy
without .git, and always a sha256 of the package sources."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tprop.run import source_sha256

SRC = Path(__file__).resolve().parents[1] / "src"


def test_a_copy_without_git_still_names_its_code(tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(SRC / "tprop", copy / "tprop", ignore=shutil.ignore_patterns("__pycache__"))
    probe = "from tprop.run import git_commit, source_sha256; print(git_commit(), source_sha256())"
    env = {k: v for k, v in os.environ.items() if k != "TPROP_GIT_COMMIT"}
    env["PYTHONPATH"] = str(copy)
    run = lambda e: subprocess.run(  # noqa: E731
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env=e,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert run(env) == ["None", source_sha256()]
    assert run({**env, "TPROP_GIT_COMMIT": "abc123"}) == ["abc123", source_sha256()]
    (copy / "tprop" / "objective.py").write_text("# changed\n")
    assert run(env)[1] != source_sha256()
