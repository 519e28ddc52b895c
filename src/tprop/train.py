"""The flat training loop for every method.

`train(cfg)` reads the data, builds the model, the θ optimiser and the method (truncated BPTT,
`tprop.bptt`, or blocked target propagation, `tprop.btprop`; the loop sees only the `Method`
interface of `tprop.methods`), and runs epochs. After every epoch it evaluates validation
perplexity, keeps the best weights, writes a checkpoint and a metrics line; at the end it
evaluates the test split with the best weights. The run folder, signals and provenance live in
`tprop.run`; checkpoint files and RNG state in `tprop.checkpoint`.

With several ranks (torchrun, or ``--nproc``; `tprop.parallel`) every rank runs this same
loop: each step's metric sums and control flags (a signal, a checkpoint due) are summed over
ranks, so every rank takes the same decisions; validation perplexity comes from rank 0; only
rank 0 owns the run folder, writes metrics and checkpoints and scores the test split.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tprop import __version__, checkpoint
from tprop.accel import optimizer_kwargs
from tprop.bptt import TruncatedBPTT
from tprop.btprop import BlockTP
from tprop.config import Config, ConfigError
from tprop.evaluate import evaluate
from tprop.methods import Method
from tprop.metrics import MetricsSink, fmt_ppl, progress
from tprop.model import RNNLM
from tprop.objective import bits_per_token, perplexity
from tprop.parallel import Comm, owned_folder, resume_after_restart
from tprop.run import (
    Diverged,
    Progress,
    RunError,
    RunFolder,
    StopSignals,
    check_resumable,
    provenance,
    record_code,
)


# ---- set-up ------------------------------------------------------------------------------
def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA device is available; use --device cpu")
    if name == "cuda" and "LOCAL_RANK" in os.environ:  # one GPU per rank of torchrun
        name = f"cuda:{os.environ['LOCAL_RANK']}"
    return torch.device(name)


def setup_device(cfg: Config) -> torch.device:
    device = pick_device(cfg.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
        torch.backends.cudnn.allow_tf32 = cfg.tf32
    if cfg.deterministic:
        # cuBLAS needs a fixed workspace to be deterministic; set before its first use.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    torch.set_flush_denormal(cfg.flush_denormal)  # a process setting: each run sets its own
    return device


def build_model(cfg: Config, vocab_size: int, device: torch.device) -> RNNLM:
    """The model, initialised from the global RNG (seed it first: `checkpoint.seed_everything`)."""
    model = RNNLM(vocab_size, cfg.hidden, cfg.cell, cfg.layers, cfg.emb)
    return model.to(device=device, dtype=getattr(torch, cfg.dtype))


def make_optimizer(cfg: Config, model: RNNLM) -> torch.optim.Optimizer:
    impl = optimizer_kwargs(cfg.optim_impl, next(model.parameters()).device)
    if cfg.optim == "adagrad":
        return torch.optim.Adagrad(model.parameters(), lr=cfg.lr, eps=cfg.adagrad_eps, **impl)
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, **impl)


def build_method(
    cfg: Config,
    model: RNNLM,
    opt: torch.optim.Optimizer,
    train_ids: Tensor,
    comm: Comm | None = None,
) -> Method:
    """Arrange the training tokens for the method (its row of METHODS) and return it."""
    if cfg.row.blocked:
        return BlockTP(model, opt, train_ids, cfg, comm)
    return TruncatedBPTT.from_config(cfg, model, opt, train_ids, comm)


def limited(corpus, cfg: Config) -> tuple[Tensor, Tensor, Tensor | None]:
    def cut(t: Tensor | None, n: int) -> Tensor | None:
        return t if (t is None or n == 0) else t[:n]

    return (
        cut(corpus.train, cfg.train_limit),
        cut(corpus.valid, cfg.eval_limit),
        cut(corpus.test, cfg.eval_limit),
    )


# ---- run state ---------------------------------------------------------------------------
@dataclass
class Run:
    """What the loop works on: the built objects and where the run stands."""

    cfg: Config
    folder: RunFolder | None  # None on ranks other than 0: they write nothing
    model: RNNLM
    opt: torch.optim.Optimizer
    method: Method
    vocab: int
    prog: Progress
    best: dict[str, Tensor]  # the best-validation weights so far
    sink: MetricsSink | None = None
    last_save: float = field(default_factory=time.time)
    origin: dict[str, Any] = field(default_factory=dict)  # code and device, read at the start
    comm: Comm = field(default_factory=Comm)

    @property
    def out(self) -> Path:
        return Path(self.cfg.out)

    def save(self) -> None:
        method = self.method.state_dict()  # on every rank: it gathers the ranks' block state
        f = self.folder
        if f is not None:
            checkpoint.save(
                {
                    "tprop_version": __version__,
                    "config": self.cfg.to_dict(),
                    "vocab_size": self.vocab,
                    "model": self.model.state_dict(),
                    "best_model": self.best,
                    "optimizer": self.opt.state_dict(),
                    "method": method,
                    "rng": checkpoint.rng_state(),
                    "progress": dataclasses.asdict(self.prog),
                    "metrics_bytes": f.metrics.stat().st_size if f.metrics.exists() else 0,
                },
                f.checkpoint,
            )
        self.last_save = time.time()

    def restore(self, device: torch.device) -> dict[str, Any]:
        """Load the checkpoint (rank 0 reads it; the other ranks receive it)."""
        where = "cpu" if self.comm.parallel else device
        saved = checkpoint.load(self.folder.checkpoint, map_location=where) if self.folder else None
        saved = self.comm.from_first(saved, "checkpoint")
        _check_resumable(saved, self.cfg, self.vocab)
        self.model.load_state_dict(saved["model"])
        self.best = saved["best_model"]
        self.opt.load_state_dict(saved["optimizer"])
        self.method.load_state_dict(saved["method"])
        checkpoint.set_rng_state(saved["rng"])
        self.prog = Progress.restore(saved["progress"])
        return saved


def _check_resumable(saved: dict[str, Any], cfg: Config, vocab: int) -> None:
    check_resumable(saved["config"], cfg)
    if saved["vocab_size"] != vocab:
        raise RunError(
            f"--resume: vocabulary size {vocab} differs from the checkpoint's "
            f"{saved['vocab_size']}; use the same dataset files"
        )


# ---- the loop ----------------------------------------------------------------------------
LOG_EVERY = 50
"""Steps between reads of the loss on the host (divergence check, progress bar) and, with
several ranks, between agreements on a signal or a checkpoint due."""


def train(cfg: Config) -> dict[str, Any]:
    """Train one run into cfg.out; return its summary (also written to summary.json)."""
    t_start = time.time()
    device = setup_device(cfg)
    comm = Comm.from_env(device, cfg.dist_timeout)
    try:
        cfg = resume_after_restart(cfg, comm)
        folder = owned_folder(cfg, comm)  # nothing is written before every check has passed
        run, source, valid_ids, test_ids = build_run(cfg, folder, device, comm)
        writer = folder.open() if folder is not None else contextlib.nullcontext()
        with writer:  # one writer for the run's life
            start_run(run, device, source)
            with StopSignals() as stop:
                while run.prog.stop_reason is None and run.prog.epoch <= cfg.epochs:
                    train_epoch(run, stop, device)
                    if run.prog.stop_reason is not None:
                        break
                    end_epoch(run, valid_ids)
                    if not run.prog.stop_reason or not run.prog.stop_reason.startswith("diverged"):
                        run.save()
                    stopping = comm.agree(stop.signum is not None)
                    if stopping and run.prog.stop_reason is None and run.prog.epoch <= cfg.epochs:
                        raise stop.interrupted(run.prog.epoch, run.prog.step, run.out)
            return finish(run, test_ids, device, t_start)
    finally:
        comm.close()


def build_run(
    cfg: Config, folder: RunFolder | None, device: torch.device, comm: Comm | None = None
) -> tuple[Run, str, Tensor, Tensor | None]:
    """Data, model, θ optimiser and method, seeded from cfg.seed; nothing is written."""
    from tprop.data import load_corpus

    comm = comm or Comm()
    corpus = load_corpus(cfg.dataset, cfg.data_dir, text8_split=cfg.text8_split)
    train_ids, valid_ids, test_ids = (
        t if t is None else t.to(device) for t in limited(corpus, cfg)
    )
    checkpoint.seed_everything(cfg.seed)
    model = build_model(cfg, len(corpus.vocab), device)
    comm.same_params(model)  # every rank starts from rank 0's θ
    opt = make_optimizer(cfg, model)
    method = build_method(cfg, model, opt, train_ids, comm)
    run = Run(
        cfg,
        folder,
        model,
        opt,
        method,
        len(corpus.vocab),
        Progress(),
        {k: v.detach().clone() for k, v in model.state_dict().items()},
        origin={**provenance(device), "world_size": comm.world},  # before HEAD can move
        comm=comm,
    )
    return run, corpus.source, valid_ids, test_ids


def start_run(run: Run, device: torch.device, source: str) -> None:
    """Restore a resumed run, write config.json, open the metrics and say what runs."""
    cfg, folder = run.cfg, run.folder
    saved = run.restore(device) if cfg.resume else None
    here = record_code(run.prog.code, run.origin)
    if folder is None:  # a rank other than 0: it logs nothing
        run.sink = MetricsSink(None, echo=False)
        return
    launch = os.environ.get("TORCHELASTIC_RUN_ID")
    folder.write_config({"vocab_size": run.vocab, "data_source": source, "launch": launch})
    if saved is not None:
        folder.truncate_metrics(saved["metrics_bytes"])
    run.sink = sink = MetricsSink(folder.metrics)
    ranks = f" × {run.comm.world} processes" if run.comm.parallel else ""
    sink.line(
        f"tprop {cfg.method} on {cfg.dataset} ({run.method.tokens_per_epoch():,} train "
        f"tokens per epoch, vocab {run.vocab:,}) {cfg.cell} {cfg.hidden} on {device}{ranks} → "
        f"{folder.path}"
    )
    for note in _notes(cfg):
        sink.line(f"note: {note}")
    if saved is not None:
        sink.line(f"resuming at epoch {run.prog.epoch}, step {run.prog.step}")
        sink.log("resume", epoch=run.prog.epoch, step=run.prog.step, **here)


def train_epoch(run: Run, stop: StopSignals, device: torch.device) -> None:
    """The steps of one epoch from `prog.step` on; checkpoints on time and on a signal."""
    cfg, prog, method, comm = run.cfg, run.prog, run.method, run.comm
    steps = method.steps()
    if prog.step == 0:
        method.start_epoch()
        prog.sums, prog.epoch_tokens, prog.epoch_s = {}, 0, 0.0
        comm.sent.clear()
    every_s = cfg.checkpoint_every * 60
    t0 = time.time()
    bar_on = cfg.progress and comm.rank == 0
    with progress(method.tokens_per_epoch(), f"epoch {prog.epoch}", bar_on) as bar:
        bar.update(prog.epoch_tokens)
        for i in range(prog.step, len(steps)):
            stats = method.step(*steps[i], epoch=prog.epoch)
            n_tok = stats.pop("tokens")
            # Several ranks agree on the flags (a host read) once per log interval.
            check = not comm.parallel or i % LOG_EVERY == LOG_EVERY - 1 or i == len(steps) - 1
            due = check and every_s > 0 and time.time() - run.last_save >= every_s
            flags = (due, stop.signum is not None) if check else ()
            stats, flags = comm.sum_step(stats, *flags)
            due, signalled = flags or (False, False)
            stop.join(signalled)
            for k, v in stats.items():
                prog.sums[k] = prog.sums.get(k, 0) + v.detach().double()
            prog.step, prog.epoch_tokens = i + 1, prog.epoch_tokens + n_tok
            bar.update(n_tok)
            stopping = check and stop.signum is not None  # every rank at the same step
            if i % LOG_EVERY == LOG_EVERY - 1 or due or stopping:
                if _diverged(prog, f"epoch {prog.epoch}, step {i + 1}"):
                    return
                bar.set_postfix(
                    loss=f"{prog.sums['nll'].item() / prog.epoch_tokens:.3f}", refresh=False
                )
            if (due or stopping) and prog.step < len(steps):
                now = time.time()
                prog.epoch_s, t0 = prog.epoch_s + now - t0, now
                run.save()
            if stopping and prog.step < len(steps):
                raise stop.interrupted(prog.epoch, prog.step, run.out)
    if device.type == "cuda":
        torch.cuda.synchronize()
    prog.epoch_s += time.time() - t0


def _diverged(prog: Progress, where: str) -> bool:
    if math.isfinite(prog.sums["nll"].item()):
        return False
    prog.stop_reason = f"diverged: training loss is NaN or infinite ({where})"
    return True


def end_epoch(run: Run, valid_ids: Tensor) -> None:
    """Validate, log, keep the best weights, adjust lr, decide whether to stop."""
    cfg, prog, model, opt = run.cfg, run.prog, run.model, run.opt
    epoch, tokens, dt = prog.epoch, prog.epoch_tokens, prog.epoch_s
    prog.train_s += dt
    prog.train_tokens += tokens
    train_nll = prog.sums["nll"].item() / tokens
    bar = "valid" if cfg.progress and run.comm.rank == 0 else None
    v_nll, v_n = evaluate(model, valid_ids, cfg.eval_batch_size, cfg.eval_bptt, bar=bar)
    v_nll, v_n = run.comm.from_first((v_nll, v_n))  # every rank decides on rank 0's figure
    valid_ppl = perplexity(v_nll, v_n) if math.isfinite(v_nll) else math.inf
    prog.history.append(valid_ppl)
    improved = valid_ppl < prog.best_ppl
    if improved:
        prog.best_ppl, prog.best_epoch = valid_ppl, epoch
        run.best = {k: v.detach().clone() for k, v in model.state_dict().items()}
    record = {
        "epoch": epoch,
        "train/nll": train_nll,
        "train/ppl": _safe_exp(train_nll),
        "train/tokens_per_s": tokens / dt,
        "train/epoch_s": dt,
        "valid/ppl": valid_ppl,
        "valid/bits": bits_per_token(v_nll, v_n),
        "valid/tokens": v_n,
        "valid/best_ppl": prog.best_ppl,
        "optim/lr": opt.param_groups[0]["lr"],
    }
    for k, v in prog.sums.items():
        if k == "nll" or k.endswith("_n"):
            continue
        count = prog.sums.get(f"{k}_n")  # a sum over blocks, averaged per block; else per step
        record[f"tp/{k}"] = v.item() / (count.item() if count is not None else prog.step)
        if count is not None and count.item() == 0:
            record[f"tp/{k}"] = 0.0
    for kind, n_bytes in sorted(run.comm.sent.items()):
        record[f"dist/bytes_per_step/{kind}"] = n_bytes / prog.step
    run.sink.log("epoch", **record)
    run.sink.line(
        f"epoch {epoch:3d} | train ppl {fmt_ppl(_safe_exp(train_nll))} | valid ppl "
        f"{fmt_ppl(valid_ppl)} | {tokens / dt:9,.0f} tok/s | {dt:6.1f} s"
        + (" *" if improved else "")
    )
    prog.epoch, prog.step = epoch + 1, 0
    if not math.isfinite(train_nll) or not math.isfinite(valid_ppl):
        prog.stop_reason = f"diverged: loss is NaN or infinite at epoch {epoch}"
    elif cfg.max_ppl and valid_ppl > cfg.max_ppl:
        prog.stop_reason = (
            f"diverged: valid ppl {fmt_ppl(valid_ppl).strip()} > --max-ppl {cfg.max_ppl:g}"
        )
    elif cfg.patience and epoch - prog.best_epoch >= cfg.patience:
        prog.stop_reason = f"early stop: no improvement for {cfg.patience} epochs"
    if cfg.optim == "sgd" and not improved:
        for g in opt.param_groups:
            g["lr"] /= cfg.lr_shrink


def finish(run: Run, test_ids: Tensor | None, device: torch.device, t_start: float) -> dict:
    """Score the test split with the best weights; write summary.json; say why it stopped."""
    cfg, prog, sink = run.cfg, run.prog, run.sink
    summary: dict[str, Any] = {
        "best_valid_ppl": prog.best_ppl,
        "best_epoch": prog.best_epoch,
        "final_valid_ppl": prog.history[-1] if prog.history else None,
        "epochs": len(prog.history),
        "valid_ppl_history": prog.history,
        "stop_reason": prog.stop_reason or "max_epochs",
        "train_tokens_per_s": prog.train_tokens / prog.train_s if prog.train_s else None,
        "train_s": prog.train_s,
        **run.origin,
        "code_history": prog.code,
    }
    if run.folder is None:  # ranks other than 0: rank 0 scores the test split and reports
        return summary
    if prog.stop_reason is not None:
        sink.line(f"stopped: {prog.stop_reason}")
    if test_ids is not None and prog.best_epoch > 0:
        run.model.load_state_dict(run.best)
        t_nll, t_n = evaluate(
            run.model,
            test_ids,
            cfg.eval_batch_size,
            cfg.eval_bptt,
            bar="test" if cfg.progress else None,
        )
        summary.update(test_ppl=perplexity(t_nll, t_n), test_bits=bits_per_token(t_nll, t_n))
        sink.line(
            f"test ppl {fmt_ppl(summary['test_ppl']).strip()} (best epoch "
            f"{prog.best_epoch}, valid ppl {fmt_ppl(prog.best_ppl).strip()})"
        )
    else:
        summary["test_ppl"] = None
    summary["wall_s"] = time.time() - t_start
    sink.log("summary", **summary)
    run.folder.write_summary(summary)
    if summary["stop_reason"].startswith("diverged"):
        where = run.out
        kept = (
            f"the last good checkpoint and summary.json are in {where}"
            if run.folder.checkpoint.exists()
            else f"it had saved no checkpoint yet; summary.json is in {where}"
        )
        raise Diverged(f"run stopped, {summary['stop_reason']}; {kept}")
    return summary


def _notes(cfg: Config) -> list[str]:
    """One line each for settings that will not do what their name suggests."""
    notes = []
    if cfg.row.duals and cfg.u_start_epoch > cfg.epochs:
        notes.append(
            f"{cfg.method} takes its first dual step in epoch {cfg.u_start_epoch} "
            f"(--u-start-epoch), after the last of --epochs {cfg.epochs}: this run "
            "is the penalty method"
        )
    return notes


def _safe_exp(x: float) -> float:
    return math.exp(x) if x < 700 else math.inf
