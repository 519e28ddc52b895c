"""A BPTT step of a run that blew up, with and without `--flush-denormal`, one thread.

At Adagrad 0.1, PTB runs at hidden 400 can blow up in their first epoch: hidden units
saturate and part of the step's arithmetic runs on subnormal floats, which a CPU runs many
times slower. This loads a run's checkpoint (model and carried state), and times one forward
and backward of a K = 10 window over 32 streams on random tokens with
``torch.set_flush_denormal`` off and on, alternating, each timed by torch's own timer. Any
checkpoint works; on a healthy one the two should match.

    python benchmarks/subnormal_step.py RUN_FOLDER
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils import benchmark

from tprop.model import RNNLM


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a run folder with checkpoint.pt")
    ap.add_argument("--repeats", type=int, default=3, help="off/on pairs [default: 3]")
    args = ap.parse_args()
    torch.set_num_threads(1)
    ck = torch.load(args.run / "checkpoint.pt", weights_only=True, map_location="cpu")
    cfg = ck["config"]
    model = RNNLM(ck["vocab_size"], cfg["hidden"], cfg["cell"], cfg["layers"], cfg["emb"])
    model.load_state_dict(ck["model"])
    state = ck["method"]["state"]
    g = torch.Generator().manual_seed(0)
    x, y = (torch.randint(0, ck["vocab_size"], (10, state.shape[0]), generator=g) for _ in "xy")

    def step() -> float:
        model.zero_grad()
        logits, _ = model(x, state.clone())
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        return loss.item()

    saturated = (state.abs() > 0.999).float().mean().item()
    print(f"{args.run}: epoch {ck['progress']['epoch']}, step {ck['progress']['step']}; "
          f"{saturated:.0%} of the carried state's units at |h| > 0.999")  # fmt: skip
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.repeats):
        for flush in (False, True):
            torch.set_flush_denormal(flush)
            timer = benchmark.Timer(stmt="step()", globals={"step": step}, num_threads=1)
            times[flush].append(1e3 * timer.blocked_autorange(min_run_time=1.0).median)
            loss = step()
            print(
                f"  flush_denormal={flush!s:5}  {times[flush][-1]:8.1f} ms a step  loss {loss:.4f}"
            )
    off, on = (sorted(times[f])[len(times[f]) // 2] for f in (False, True))
    print(f"median: {off:.1f} ms off, {on:.1f} ms on; off/on = {off / on:.1f}x")


if __name__ == "__main__":
    main()
