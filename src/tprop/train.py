"""The flat training loop for every method, and evaluation.

`train(cfg)` reads the data, builds the model and the θ optimiser, and runs epochs of either
truncated BPTT (`TruncatedBPTT`, below) or blocked target propagation (`tprop.btprop.BlockTP`).
After every epoch it evaluates validation perplexity, keeps the best weights, writes a checkpoint
and a metrics line; at the end it evaluates the test split with the best weights.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from tprop import __version__, checkpoint
from tprop.batching import batchify, n_windows, window
from tprop.btprop import BlockTP, settings
from tprop.config import Config, ConfigError, build
from tprop.metrics import MetricsSink, progress
from tprop.model import RNNLM
from tprop.objective import bits_per_token, nll_sum, perplexity

if TYPE_CHECKING:
    from tprop.data import Corpus

RUN_FILES = ("config.json", "metrics.jsonl", "summary.json", "checkpoint.pt")


class RunError(Exception):
    """A problem with the run folder or the run itself; ``str(e)`` is one line."""


class Diverged(RunError):
    pass


# ---- set-up ------------------------------------------------------------------------------
def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA device is available; use --device cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_model(cfg: Config, vocab_size: int, device: torch.device) -> RNNLM:
    seed_everything(cfg.seed)
    model = RNNLM(vocab_size, cfg.hidden, cfg.cell, cfg.layers, cfg.emb)
    return model.to(device=device, dtype=getattr(torch, cfg.dtype))


def make_optimizer(cfg: Config, model: RNNLM) -> torch.optim.Optimizer:
    if cfg.optim == "adagrad":
        return torch.optim.Adagrad(model.parameters(), lr=cfg.lr, eps=cfg.adagrad_eps)
    return torch.optim.SGD(model.parameters(), lr=cfg.lr)


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


# ---- evaluation --------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model: RNNLM, ids: Tensor, batch_size: int, bptt: int) -> tuple[float, int]:
    """Σ NLL and token count over a whole split: `batch_size` streams, state carried from zero.

    Every row but the last is scored, so the count is (⌊N/batch_size⌋ − 1)·batch_size; the
    window length changes only the speed.
    """
    was_training = model.training
    model.eval()
    data = batchify(ids, batch_size)
    state = model.zero_state(batch_size)
    total = torch.zeros((), dtype=torch.float64, device=ids.device)
    for i in range(0, data.shape[0] - 1, bptt):
        k = min(bptt, data.shape[0] - 1 - i)
        logits, state = model(data[i:i + k], state)
        total += nll_sum(logits, data[i + 1:i + 1 + k]).double()
    model.train(was_training)
    return total.item(), (data.shape[0] - 1) * batch_size


# ---- truncated BPTT ----------------------------------------------------------------------
class TruncatedBPTT:
    """Windows of K tokens over S streams; state carried and detached between windows."""

    def __init__(self, model: RNNLM, optimizer: torch.optim.Optimizer, data: Tensor, k: int,
                 clip: float, full_batch: bool):
        self.model, self.opt, self.data = model, optimizer, data
        self.k, self.clip, self.full_batch = k, clip, full_batch
        self.n = n_windows(data, k)
        self.state = model.zero_state(data.shape[1])

    def steps(self) -> list[tuple[int]]:
        return [(i,) for i in range(self.n)]

    def start_epoch(self) -> None:
        self.state = self.model.zero_state(self.data.shape[1])
        if self.full_batch:
            self.opt.zero_grad(set_to_none=True)

    def _update(self) -> None:
        if self.clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.opt.step()

    def step(self, i: int, epoch: int) -> dict[str, Tensor]:
        x, y = window(self.data, i, self.k)
        if not self.full_batch:
            self.opt.zero_grad(set_to_none=True)
        logits, last = self.model(x, self.state)
        nll = nll_sum(logits, y)
        loss = nll / y.numel()  # mean cross-entropy over the window
        (loss / self.n if self.full_batch else loss).backward()
        if not self.full_batch:
            self._update()
        elif i == self.n - 1:  # one update per epoch from the window-averaged gradient
            self._update()
        self.state = last.detach()
        return {"nll": nll.detach(), "tokens": torch.tensor(y.numel())}

    def state_dict(self) -> dict[str, Any]:
        # Full-batch mode accumulates the epoch's gradient across steps: part of the state.
        grads = [p.grad for p in self.model.parameters()] if self.full_batch else []
        return {"state": self.state, "grads": grads}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.state = sd["state"].to(self.state)
        for p, g in zip(self.model.parameters(), sd["grads"], strict=False):
            p.grad = None if g is None else g.to(p)


def build_method(cfg: Config, model: RNNLM, opt: torch.optim.Optimizer, train_ids: Tensor):
    """Arrange the training tokens for the method and return the method object."""
    if not cfg.is_btprop:
        data = batchify(train_ids, cfg.batch_size)
        if n_windows(data, cfg.bptt) < 1:
            raise ConfigError(
                f"--bptt {cfg.bptt} is longer than the training data per stream "
                f"({data.shape[0]} tokens with --batch-size {cfg.batch_size}); lower either")
        return TruncatedBPTT(model, opt, data, cfg.bptt, cfg.clip, cfg.full_batch)
    streams = cfg.batch_size if cfg.layout == "streams" else 1
    data = batchify(train_ids, streams)
    n_rows = (data.shape[0] - 1) // cfg.block_size
    if n_rows < 1:
        raise ConfigError(
            f"--block-size {cfg.block_size} is longer than the training data per stream "
            f"({data.shape[0]} tokens); lower --block-size (or --batch-size with streams)")
    rows = n_rows if cfg.full_batch else (1 if cfg.layout == "streams" else cfg.batch_size)
    return BlockTP(model, opt, data, settings(cfg), rows)


# ---- run folder --------------------------------------------------------------------------
def check_run_folder(cfg: Config) -> Path:
    """Check the run folder; nothing is written (no half-written or clobbered runs)."""
    if not cfg.out:
        raise ConfigError("--out is required: the run folder to write")
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out} exists and is not a folder; choose another path")
    occupied = out.is_dir() and any(out.iterdir())
    if cfg.resume:
        if not (out / "checkpoint.pt").is_file():
            raise RunError(f"--resume: {out} holds no checkpoint.pt to resume from")
        return out
    if occupied and not cfg.overwrite:
        raise RunError(f"run folder {out} is not empty; pass --overwrite to replace it "
                       "or --resume to continue it")
    return out


def open_run_folder(out: Path, cfg: Config) -> None:
    """Create (or, with --overwrite, empty) the run folder, once every check has passed."""
    if cfg.overwrite and out.is_dir():
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    for name in RUN_FILES:  # temporary files of a writer that was killed mid-write
        for stale in out.glob(f"{name}.*.tmp"):
            stale.unlink()


def _check_resumable(saved: dict[str, Any], cfg: Config, vocab: int) -> None:
    for key in ("dataset", "cell", "hidden", "layers", "emb", "method", "block_size", "bptt",
                "batch_size", "layout", "full_batch", "dtype", "train_limit"):
        if saved["config"].get(key) != getattr(cfg, key):
            raise RunError(f"--resume: the checkpoint has {key}={saved['config'].get(key)!r} but "
                           f"this run asks for {getattr(cfg, key)!r}; use the same setting")
    if saved["vocab_size"] != vocab:
        raise RunError(f"--resume: vocabulary size {vocab} differs from the checkpoint's "
                       f"{saved['vocab_size']}; use the same dataset files")


def limited(corpus: Corpus, cfg: Config) -> tuple[Tensor, Tensor, Tensor | None]:
    def cut(t: Tensor | None, n: int) -> Tensor | None:
        return t if (t is None or n == 0) else t[:n]
    return (cut(corpus.train, cfg.train_limit), cut(corpus.valid, cfg.eval_limit),
            cut(corpus.test, cfg.eval_limit))


# ---- run state --------------------------------------------------------------------------
@dataclass
class Progress:
    """Where a run stands. Saved in every checkpoint, so --resume continues exactly."""

    epoch: int = 1                       # the epoch in progress (1-based)
    step: int = 0                        # the next step of that epoch (data position)
    sums: dict[str, Tensor] = field(default_factory=dict)  # this epoch's accumulators
    epoch_tokens: int = 0
    epoch_s: float = 0.0
    best_ppl: float = math.inf
    best_epoch: int = 0
    history: list[float] = field(default_factory=list)
    train_s: float = 0.0
    train_tokens: int = 0
    stop_reason: str | None = None


def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(st: dict[str, Any]) -> None:
    # RNG states are CPU byte tensors, wherever map_location put the checkpoint.
    random.setstate(st["python"])
    torch.set_rng_state(st["torch"].cpu())
    kind, keys, pos, has_gauss, gauss = st["numpy"]
    np.random.set_state((kind, keys.cpu().numpy().astype(np.uint32), pos, has_gauss, gauss))
    if st["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in st["cuda"]])


class Interrupted(RunError):
    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


class StopSignals:
    """SIGINT/SIGTERM set a flag: the loop finishes its step, checkpoints and exits 130/143."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signum = signum
        signal.signal(signum, self._old.get(signum, signal.SIG_DFL))  # a second one is fatal

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


# ---- the loop ----------------------------------------------------------------------------
def train(cfg: Config) -> dict[str, Any]:
    """Train one run into cfg.out; return its summary (also written to summary.json)."""
    t_start = time.time()
    out = check_run_folder(cfg)
    device = pick_device(cfg.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
        torch.backends.cudnn.allow_tf32 = cfg.tf32
    if cfg.deterministic:
        # cuBLAS needs a fixed workspace to be deterministic; set before its first use.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    from tprop.data import load_corpus

    corpus = load_corpus(cfg.dataset, cfg.data_dir, text8_split=cfg.text8_split)
    train_ids, valid_ids, test_ids = (t if t is None else t.to(device)
                                      for t in limited(corpus, cfg))
    vocab = len(corpus.vocab)
    model = build_model(cfg, vocab, device)
    opt = make_optimizer(cfg, model)
    method = build_method(cfg, model, opt, train_ids)
    prog = Progress()
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    metrics_path = out / "metrics.jsonl"

    saved = checkpoint.load(out / "checkpoint.pt", map_location=device) if cfg.resume else None
    if saved is not None:
        _check_resumable(saved, cfg, vocab)
        model.load_state_dict(saved["model"])
        best_state = saved["best_model"]
        opt.load_state_dict(saved["optimizer"])
        method.load_state_dict(saved["method"])
        set_rng_state(saved["rng"])
        prog = Progress(**saved["progress"])
    open_run_folder(out, cfg)
    checkpoint.write_text(out / "config.json", json.dumps(
        {**cfg.to_dict(), "vocab_size": vocab, "data_source": corpus.source}, indent=2) + "\n")
    if saved is not None and metrics_path.exists():
        # Drop what was logged after the checkpoint; those steps are about to be redone.
        os.truncate(metrics_path, min(saved["metrics_bytes"], metrics_path.stat().st_size))
    sink = MetricsSink(metrics_path)
    sink.line(f"tprop {cfg.method} on {cfg.dataset} ({len(train_ids):,} train tokens, "
              f"vocab {vocab:,}) {cfg.cell} {cfg.hidden} on {device} → {out}")
    if saved is not None:
        sink.line(f"resuming at epoch {prog.epoch}, step {prog.step}")
        sink.log("resume", epoch=prog.epoch, step=prog.step)

    def save() -> None:
        checkpoint.save({
            "tprop_version": __version__, "config": cfg.to_dict(), "vocab_size": vocab,
            "model": model.state_dict(), "best_model": best_state,
            "optimizer": opt.state_dict(), "method": method.state_dict(), "rng": rng_state(),
            "progress": dataclasses.asdict(prog),
            "metrics_bytes": metrics_path.stat().st_size if metrics_path.exists() else 0,
        }, out / "checkpoint.pt")

    def diverged(where: str) -> bool:
        if math.isfinite(prog.sums["nll"].item()):
            return False
        prog.stop_reason = f"diverged: training loss is NaN or infinite ({where})"
        return True

    every_s = cfg.checkpoint_every * 60
    last_save = time.time()
    with StopSignals() as stop:
        while prog.stop_reason is None and prog.epoch <= cfg.epochs:
            steps = method.steps()
            if prog.step == 0:
                method.start_epoch()
                prog.sums, prog.epoch_tokens, prog.epoch_s = {}, 0, 0.0
            t0 = time.time()
            bar = progress(_epoch_tokens(method, cfg), f"epoch {prog.epoch}", cfg.progress)
            bar.update(prog.epoch_tokens)
            with bar:
                for i in range(prog.step, len(steps)):
                    stats = method.step(*steps[i], epoch=prog.epoch)
                    n_tok = int(stats.pop("tokens"))
                    for k, v in stats.items():
                        prog.sums[k] = prog.sums.get(k, 0) + v.detach().double()
                    prog.step, prog.epoch_tokens = i + 1, prog.epoch_tokens + n_tok
                    bar.update(n_tok)
                    due = every_s > 0 and time.time() - last_save >= every_s
                    if i % 50 == 49 or due or stop.signum:
                        if diverged(f"epoch {prog.epoch}, step {i + 1}"):
                            break
                        bar.set_postfix(loss=f"{prog.sums['nll'].item() / prog.epoch_tokens:.3f}",
                                        refresh=False)
                    if (due or stop.signum) and prog.step < len(steps):
                        now = time.time()
                        prog.epoch_s, t0 = prog.epoch_s + now - t0, now
                        save()
                        last_save = time.time()
                    if stop.signum and prog.step < len(steps):
                        raise _interrupted(stop.signum, prog, out)
            if prog.stop_reason is not None:
                break
            if device.type == "cuda":
                torch.cuda.synchronize()
            prog.epoch_s += time.time() - t0
            best_state = _end_epoch(cfg, model, opt, prog, best_state, valid_ids, sink)
            if not (prog.stop_reason or "").startswith("diverged"):
                save()
                last_save = time.time()
            if stop.signum and prog.stop_reason is None and prog.epoch <= cfg.epochs:
                raise _interrupted(stop.signum, prog, out)

    epochs_done = len(prog.history)
    summary: dict[str, Any] = {
        "best_valid_ppl": prog.best_ppl, "best_epoch": prog.best_epoch,
        "final_valid_ppl": prog.history[-1] if prog.history else None, "epochs": epochs_done,
        "valid_ppl_history": prog.history, "stop_reason": prog.stop_reason or "max_epochs",
        "train_tokens_per_s": prog.train_tokens / prog.train_s if prog.train_s else None,
        "train_s": prog.train_s, "device": _device_name(device),
        "tprop_version": __version__, "git_commit": git_commit(),
        "torch_version": torch.__version__, "threads": torch.get_num_threads(),
    }
    if test_ids is not None and prog.best_epoch > 0:
        model.load_state_dict(best_state)
        t_nll, t_n = evaluate(model, test_ids, cfg.eval_batch_size, cfg.eval_bptt)
        summary.update(test_ppl=perplexity(t_nll, t_n), test_bits=bits_per_token(t_nll, t_n))
        sink.line(f"test ppl {summary['test_ppl']:.2f} (best epoch {prog.best_epoch}, "
                  f"valid ppl {prog.best_ppl:.2f})")
    else:
        summary["test_ppl"] = None
    summary["wall_s"] = time.time() - t_start
    sink.log("summary", **summary)
    checkpoint.write_text(out / "summary.json", json.dumps(
        {k: v if not (isinstance(v, float) and not math.isfinite(v)) else str(v)
         for k, v in summary.items()}, indent=2) + "\n")
    if summary["stop_reason"].startswith("diverged"):
        raise Diverged(f"run stopped, {summary['stop_reason']}; the last good checkpoint and "
                       f"summary.json are in {out}")
    return summary


def _interrupted(signum: int, prog: Progress, out: Path) -> Interrupted:
    name = signal.Signals(signum).name
    return Interrupted(f"{name}: checkpoint saved at epoch {prog.epoch}, step {prog.step}; "
                       f"continue with `tprop train --out {out} --resume`", 128 + signum)


def _end_epoch(cfg: Config, model: RNNLM, opt: torch.optim.Optimizer, prog: Progress,
               best_state: dict[str, Tensor], valid_ids: Tensor, sink: MetricsSink):
    """Validate, log, keep the best weights, adjust lr, decide whether to stop."""
    epoch, sums, tokens, dt = prog.epoch, prog.sums, prog.epoch_tokens, prog.epoch_s
    prog.train_s += dt
    prog.train_tokens += tokens
    train_nll = sums["nll"].item() / tokens
    v_nll, v_n = evaluate(model, valid_ids, cfg.eval_batch_size, cfg.eval_bptt)
    valid_ppl = perplexity(v_nll, v_n) if math.isfinite(v_nll) else math.inf
    prog.history.append(valid_ppl)
    improved = valid_ppl < prog.best_ppl
    if improved:
        prog.best_ppl, prog.best_epoch = valid_ppl, epoch
        best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    record = {"epoch": epoch, "train/nll": train_nll, "train/ppl": _safe_exp(train_nll),
              "train/tokens_per_s": tokens / dt, "train/epoch_s": dt,
              "valid/ppl": valid_ppl, "valid/bits": bits_per_token(v_nll, v_n),
              "valid/tokens": v_n, "valid/best_ppl": prog.best_ppl,
              "optim/lr": opt.param_groups[0]["lr"]}
    for k, v in sums.items():
        if k != "nll":
            record[f"tp/{k}"] = v.item() / prog.step
    sink.log("epoch", **record)
    sink.line(f"epoch {epoch:3d} | train ppl {_safe_exp(train_nll):9.2f} | valid ppl "
              f"{valid_ppl:9.2f} | {tokens / dt:9,.0f} tok/s | {dt:6.1f} s"
              + (" *" if improved else ""))
    prog.epoch, prog.step = epoch + 1, 0
    if not math.isfinite(train_nll) or not math.isfinite(valid_ppl):
        prog.stop_reason = f"diverged: loss is NaN or infinite at epoch {epoch}"
    elif cfg.max_ppl and valid_ppl > cfg.max_ppl:
        prog.stop_reason = f"diverged: valid ppl {valid_ppl:.1f} > --max-ppl {cfg.max_ppl:g}"
    elif cfg.patience and epoch - prog.best_epoch >= cfg.patience:
        prog.stop_reason = f"early stop: no improvement for {cfg.patience} epochs"
    if cfg.optim == "sgd" and not improved:
        for g in opt.param_groups:
            g["lr"] /= cfg.lr_shrink
    return best_state


def _epoch_tokens(method, cfg: Config) -> int:
    if isinstance(method, BlockTP):
        return method.n_rows * method.n_streams * cfg.block_size
    return method.n * cfg.bptt * method.data.shape[1]


def _safe_exp(x: float) -> float:
    return math.exp(x) if x < 700 else math.inf


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def evaluate_checkpoint(path: str, split: str, weights: str, data_dir: str | None,
                        batch_size: int | None, device_name: str) -> dict[str, Any]:
    """`tprop eval`: perplexity of a saved run on a split."""
    device = pick_device(device_name)
    saved = checkpoint.load(path, map_location=device)
    from tprop.data import load_corpus

    cfg = build({**saved["config"], "data_dir": data_dir or saved["config"]["data_dir"]})
    corpus = load_corpus(cfg.dataset, cfg.data_dir, text8_split=cfg.text8_split)
    if len(corpus.vocab) != saved["vocab_size"]:
        raise RunError(f"vocabulary of {cfg.dataset} ({len(corpus.vocab)}) differs from the "
                       f"checkpoint's ({saved['vocab_size']}); point --data-dir at the same files")
    ids = {"train": corpus.train, "valid": corpus.valid, "test": corpus.test}[split]
    if ids is None:
        raise RunError(f"{cfg.dataset} has no {split} split under its protocol")
    if split != "train" and cfg.eval_limit:
        ids = ids[:cfg.eval_limit]
    model = build_model(cfg, saved["vocab_size"], device)
    model.load_state_dict(saved["best_model" if weights == "best" else "model"])
    bs = batch_size or cfg.eval_batch_size
    nll, n = evaluate(model, ids.to(device), bs, cfg.eval_bptt)
    progress_ = saved["progress"]
    return {"split": split, "weights": weights, "ppl": perplexity(nll, n),
            "bits": bits_per_token(nll, n), "tokens": n,
            "epoch": progress_["best_epoch"] if weights == "best" else len(progress_["history"])}
