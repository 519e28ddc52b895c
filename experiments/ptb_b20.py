"""PTB, GRU 100, B = K = 20, batch 32, Adagrad θ-lr 0.1: BPTT vs ADMM (H-steps 1), both presets.

Stage 1 runs BPTT with 3 seeds and, for each preset, ADMM over the paper's Table 3 grid of
h-lr × λ (u-lr 0.1) with one seed. Stage 2 reruns the best grid point of each preset with two
more seeds. Runs go in parallel as `tprop train` subprocesses (one GPU is plenty: each run is
small); a global deadline stops what is left and the tables are written from what finished.

    python experiments/ptb_b20.py --data-dir DATA --out runs/ptb_b20 --jobs 24

Writes OUT/results.md (every run, and mean ± std per configuration) and OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SEEDS = (1111, 2222, 3333)
COMMON = [
    "--dataset",
    "ptb",
    "--hidden",
    "100",
    "--batch-size",
    "32",
    "--lr",
    "0.1",
    "--clip",
    "0.5",
    "--epochs",
    "10",
    "--patience",
    "3",
    "--no-progress",
]
H_LRS, LAMS, U_LR = ("0.1", "0.01", "0.001"), ("1", "0.1", "0.01"), "0.1"


def bptt_runs() -> dict[str, list[str]]:
    return {f"bptt_k20_s{s}": ["--method", "bptt", "--bptt", "20", "--seed", str(s)] for s in SEEDS}


def admm_args(preset: str, h_lr: str, lam: str, seed: int) -> list[str]:
    return [
        "--method",
        "admm",
        "--preset",
        preset,
        "--block-size",
        "20",
        "--h-steps",
        "1",
        "--h-lr",
        h_lr,
        "--lam",
        lam,
        "--u-lr",
        U_LR,
        "--seed",
        str(seed),
    ]


def grid_runs() -> dict[str, list[str]]:
    return {
        f"admm_{p}_hlr{h}_lam{l}_s{SEEDS[0]}": admm_args(p, h, l, SEEDS[0])
        for p in ("tprnn", "paper")
        for h in H_LRS
        for l in LAMS
    }


def launch(
    runs: dict[str, list[str]], out: Path, extra: list[str], jobs: int, deadline: float
) -> None:
    pending, active = list(runs.items()), {}
    while pending or active:
        while pending and len(active) < jobs:
            name, args = pending.pop(0)
            folder = out / name
            if (folder / "summary.json").exists():
                continue
            cmd = [
                sys.executable,
                "-m",
                "tprop.cli",
                "train",
                *COMMON,
                *args,
                *extra,
                "--out",
                str(folder),
                "--overwrite",
            ]
            folder.mkdir(parents=True, exist_ok=True)
            log = open(out / f"{name}.log", "w")
            log.write(" ".join(cmd[2:]) + "\n")
            log.flush()
            active[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log)
        for name, (proc, log) in list(active.items()):
            if proc.poll() is not None:
                log.close()
                del active[name]
        if time.time() > deadline:
            for proc, log in active.values():
                proc.kill()
                log.close()
            print(f"deadline: stopped {len(active)} runs, {len(pending)} never started")
            return
        time.sleep(1)


def summaries(out: Path) -> dict[str, dict]:
    res = {}
    for f in sorted(out.glob("*/summary.json")):
        res[f.parent.name] = json.loads(f.read_text())
    return res


def config_key(name: str) -> str:
    return name.rsplit("_s", 1)[0]


def write_tables(out: Path, res: dict[str, dict], command: str) -> None:
    groups: dict[str, list[float]] = {}
    for name, s in res.items():
        groups.setdefault(config_key(name), []).append(float(s["best_valid_ppl"]))
    lines = [
        f"Command: `{command}`",
        "",
        "| configuration | seeds | best valid ppl: mean ± std | runs |",
        "|---|---|---|---|",
    ]
    for key, vals in sorted(groups.items(), key=lambda kv: statistics.mean(kv[1])):
        sd = statistics.stdev(vals) if len(vals) > 1 else float("nan")
        lines.append(
            f"| {key} | {len(vals)} | {statistics.mean(vals):.2f} ± {sd:.2f} | "
            + ", ".join(f"{v:.2f}" for v in vals)
            + " |"
        )
    lines += [
        "",
        "| run | best valid ppl | best epoch | epochs | test ppl | train tok/s | device | wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s in res.items():
        lines.append(
            f"| {name} | {float(s['best_valid_ppl']):.2f} | {s['best_epoch']} | "
            f"{s['epochs']} | {s['test_ppl'] and round(s['test_ppl'], 2)} | "
            f"{s['train_tokens_per_s']:.0f} | {s['device']} | {s['wall_s']:.0f} |"
        )
    (out / "results.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps({"groups": groups, "runs": res}, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--jobs", type=int, default=os.cpu_count())
    ap.add_argument("--deadline-s", type=float, default=1e9, help="stop everything after this")
    ap.add_argument("--extra", default="", help="more `tprop train` flags for every run")
    ns = ap.parse_args()
    out, t0 = Path(ns.out), time.time()
    out.mkdir(parents=True, exist_ok=True)
    extra = ["--data-dir", ns.data_dir, *ns.extra.split()]
    deadline = t0 + ns.deadline_s
    launch({**bptt_runs(), **grid_runs()}, out, extra, ns.jobs, deadline)
    res = summaries(out)
    stage2 = {}
    for preset in ("tprnn", "paper"):
        cands = {n: s for n, s in res.items() if n.startswith(f"admm_{preset}_")}
        if not cands:
            continue
        best = min(cands, key=lambda n: float(cands[n]["best_valid_ppl"]))
        parts = config_key(best).split("_")  # admm, preset, hlrX, lamY
        h, lam = parts[2][3:], parts[3][3:]
        for s in SEEDS[1:]:
            stage2[f"admm_{preset}_hlr{h}_lam{lam}_s{s}"] = admm_args(preset, h, lam, s)
    launch(stage2, out, extra, ns.jobs, deadline)
    write_tables(out, summaries(out), " ".join(sys.argv))
    print((out / "results.md").read_text())
    print(f"total wall {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
