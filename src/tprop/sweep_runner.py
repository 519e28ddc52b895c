"""The sweep's scheduler: `--jobs` `tprop train` subprocesses, their states, a progress line.

The progress line is printed when a run starts or ends and when a running run ends an epoch
(read from its metrics.jsonl); time left is paced by the runs' epochs until runs have finished.

A run ends finished (exit 0), diverged (exit 3: a result, with summary.json), interrupted
(130/143: checkpointed, resumable) or failed (anything else; its output is in its stdout.log).
Runs start in their own session, so a terminal's Ctrl-C reaches only the sweep. The first
SIGINT/SIGTERM it gets, or --time-limit (as a SIGTERM), is passed to every running run, which
checkpoints and stops; any signal after that kills the runs at once (each keeps its last
checkpoint). On Linux a run also gets SIGTERM when the sweep dies without passing anything on
(SIGKILL).
"""

from __future__ import annotations

import contextlib
import json
import math
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Any

from tprop.runs import read_epochs, to_float
from tprop.sweep import FAILED_EXIT, TIME_LIMIT_EXIT, Job, Manifest
from tprop.sweep_flags import plural

POLL_S = 0.1
EPOCH_POLL_S = 5.0
"""How often the running runs' metrics.jsonl are looked at for a finished epoch."""
MTIME_SLACK_S = 1.0
"""File times come from a coarser clock than `time.time`: a file written just after a launch
may carry a time a few ms before it."""
LAUNCH_MARGIN_S = 10.0
"""No run starts this close to --time-limit: it would stop before its first checkpoint."""
INTERRUPTED = {130, 143, -signal.SIGINT, -signal.SIGTERM}


@dataclass
class Active:
    """A running run, and the pace of its epochs in this launch (monotonic seconds). A new
    run's pace counts from its start; a resumed run's from the first epoch it ends here, since
    it resumed inside an epoch whose start it did not time."""

    job: Job
    proc: subprocess.Popen
    log: IO[str]
    t0: float = field(default_factory=time.monotonic)
    wall0: float = field(default_factory=time.time)  # against its files' mtimes
    epoch: int | None = 0  # its last finished epoch (None: a resumed run not looked at yet)
    epochs: int | None = None  # its --epochs, from its config.json
    pace: tuple[int, float] | None = None  # (epoch, time) the pace counts from
    seen: float = 0.0  # when its last epoch was seen to end

    def __post_init__(self) -> None:
        if self.job.state == "resume":
            self.epoch = None
        else:
            self.pace = (0, self.t0)

    def epoch_s(self) -> float | None:
        """Seconds an epoch at this launch's pace; None before two epoch ends are timed."""
        if self.pace is None or self.epoch is None or self.epoch <= self.pace[0]:
            return None
        return (self.seen - self.pace[1]) / (self.epoch - self.pace[0])

    def left(self, now: float) -> float | None:
        """Seconds to its last epoch at that pace (early stopping may end it sooner)."""
        per = self.epoch_s()
        if per is None or not self.epochs or self.epoch is None:
            return None
        return max(per * (self.epochs - self.epoch) - (now - self.seen), 0.0)


def fmt_duration(s: float) -> str:
    s = int(round(s))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def time_left(mean: float, waiting: int, running: list[float], jobs: int) -> float:
    """Seconds until the sweep ends if each waiting run takes `mean` and each running one the
    seconds `running` gives it: the work shared by the lanes it keeps busy, and never less than
    the longest running run's rest."""
    lanes = max(min(jobs, waiting + len(running)), 1)
    return max((mean * waiting + sum(running)) / lanes, max(running, default=0.0))


def last_epoch(folder) -> tuple[int, dict[str, Any]]:
    """The last epoch record of a run folder's metrics.jsonl: (epoch, record), (0, {}) if none."""
    epochs = read_epochs(folder / "metrics.jsonl")
    return (int(epochs[-1]["epoch"]), epochs[-1]) if epochs else (0, {})


def epoch_line(name: str, epoch: int, epochs: int | None, rec: dict[str, Any]) -> str:
    """``NAME: epoch 3/10, valid ppl 150.21 (best 148.90)``; a diverged epoch's "inf" too."""
    ppl, best = to_float(rec.get("valid/ppl")), to_float(rec.get("valid/best_ppl"))
    score = "" if ppl is None else f", valid ppl {ppl:.2f}"
    score += "" if best is None else f" (best {best:.2f})"
    return f"{name}: epoch {epoch}/{epochs or '?'}{score}"


def last_line(path) -> str:
    try:
        lines = [x for x in path.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return ""
    return lines[-1][:200] if lines else ""


def _die_with_sweep() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: a run gets SIGTERM (checkpoint, exit 143) if the sweep itself is killed, so no
    orphan keeps writing into a folder that the next sweep resumes."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Runner:
    clock = staticmethod(time.monotonic)  # what --time-limit is measured with

    def __init__(
        self, grid: str, jobs: list[Job], manifest: Manifest, n_jobs: int, env: dict[str, str]
    ):
        self.todo = [j for j in jobs if j.state != "done"]
        self.total, self.n_jobs, self.env, self.manifest = len(jobs), n_jobs, env, manifest
        self.grid = grid
        self.done = self.total - len(self.todo)
        self.counts = {"finished": 0, "diverged": 0, "failed": 0, "interrupted": 0}
        self.failed: list[str] = []
        self.active: dict[str, Active] = {}
        self.durations: list[float] = []
        self.stop: str | None = None  # why the sweep stops early ("by SIGINT", …)
        self.stop_code = 0
        self.checkpointed = 0  # interrupted runs that have a checkpoint to resume from

    # ---- signals
    def _handle(self, signum: int, frame: Any) -> None:
        self._stop(f"by {signal.Signals(signum).name}", 128 + signum, signum)

    def _stop(self, why: str, code: int, signum: int) -> None:
        """The first stop (a signal or the time limit) asks each run to checkpoint and stop;
        any later signal stops them at once (each keeps its last checkpoint)."""
        if self.stop is None:
            self.stop, self.stop_code = why, code
        else:
            signum = signal.SIGKILL
        for a in self.active.values():
            with contextlib.suppress(ProcessLookupError):
                a.proc.send_signal(signum)

    @contextlib.contextmanager
    def _signals(self):
        old = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                old[sig] = signal.signal(sig, self._handle)
        try:
            yield
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)

    # ---- the loop
    def run(self, limit: tuple[float, float] | None = None) -> int:
        """Run the jobs; `limit` is (deadline on `clock`, its length in seconds)."""
        deadline = limit[0] if limit else math.inf
        next_look = self.clock() + EPOCH_POLL_S
        self._say(
            f"{plural(self.total, 'run')}, {self.done} already finished, {len(self.todo)} to do, "
            f"{self.n_jobs} at a time"
        )
        with self._signals():
            while (self.todo and self.stop is None) or self.active:
                now = self.clock()
                if limit and now >= deadline and self.stop is None:  # as a SIGTERM
                    self._stop(
                        f"at its --time-limit ({fmt_duration(limit[1])})",
                        TIME_LIMIT_EXIT,
                        signal.SIGTERM,
                    )
                while (
                    self.todo
                    and self.stop is None
                    and len(self.active) < self.n_jobs
                    and now < deadline - LAUNCH_MARGIN_S
                ):
                    self._launch(self.todo.pop(0))
                time.sleep(POLL_S)
                for name in [n for n, a in self.active.items() if a.proc.poll() is not None]:
                    self._reap(self.active.pop(name))
                if now >= next_look:
                    next_look = now + EPOCH_POLL_S
                    self._look_at_epochs()
        return self._finish()

    def _launch(self, job: Job) -> None:
        job.folder.mkdir(parents=True, exist_ok=True)
        args = list(job.args)
        if job.state == "new":  # the folder now holds stdout.log: not empty for `train`
            args.append("--overwrite")
        log = open(job.folder / "stdout.log", "a")
        log.write(f"$ tprop {shlex.join(args)}\n")
        log.flush()
        proc = subprocess.Popen(
            [sys.executable, "-m", "tprop.cli", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
            start_new_session=True,
            preexec_fn=_die_with_sweep if sys.platform == "linux" else None,
        )
        self.active[job.run.name] = Active(job, proc, log)
        self.manifest.set(job.run.name, "running")
        verb = {"resume": "resuming", "retry": "retrying"}.get(job.state, "started")
        self._say(f"{verb} {job.run.name}")

    def _reap(self, a: Active) -> None:
        a.log.close()
        rc, name = a.proc.returncode, a.job.run.name
        has_summary = (a.job.folder / "summary.json").is_file()
        if rc in (0, 3) and has_summary:
            state = "finished" if rc == 0 else "diverged"
            self.done += 1
            if a.job.state != "resume":  # a resumed run's time is part of a run's
                self.durations.append(time.monotonic() - a.t0)
            what = f"{state} {name} ({fmt_duration(time.monotonic() - a.t0)})"
        elif rc in INTERRUPTED or (self.stop is not None and rc == -signal.SIGKILL):  # `_stop`
            state = "interrupted"
            saved = (a.job.folder / "checkpoint.pt").is_file()
            self.checkpointed += saved
            what = f"interrupted {name}: " + (
                "checkpointed, resumes on the next sweep"
                if saved
                else "stopped before its first checkpoint, starts again on the next sweep"
            )
        else:
            state = "failed"
            self.failed.append(name)
            what = f"FAILED {name} (exit {rc}): {last_line(a.job.folder / 'stdout.log')}"
        self.counts[state] += 1
        self.manifest.set(name, state, None if state == "finished" else rc)
        self._say(what)

    def _look_at_epochs(self) -> None:
        """A line for each running run that has ended an epoch since the last look."""
        for name, a in self.active.items():
            try:
                if (a.job.folder / "metrics.jsonl").stat().st_mtime < a.wall0 - MTIME_SLACK_S:
                    continue  # not written by this launch yet: a failed attempt's, or the
            except OSError:  # resumed run's before it cut what came after its checkpoint
                continue
            epoch, rec = last_epoch(a.job.folder)
            if a.epoch is None:  # a resumed run: its epochs so far were ended before
                a.epoch = epoch
                continue
            if epoch <= a.epoch:
                continue
            a.epoch, a.seen = epoch, time.monotonic()
            a.pace = a.pace or (epoch, a.seen)
            if a.epochs is None:
                with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                    a.epochs = int(json.loads((a.job.folder / "config.json").read_text())["epochs"])
            self._say(epoch_line(name, epoch, a.epochs, rec))

    def _eta(self) -> str:
        """Finished runs' mean length, else a whole run at the running runs' epoch pace."""
        now = time.monotonic()
        paced = [per * a.epochs for a in self.active.values() if (per := a.epoch_s()) and a.epochs]
        runs = self.durations or paced
        if not runs:
            return "time left unknown"
        mean = sum(runs) / len(runs)
        running = [
            rest if (rest := a.left(now)) is not None else max(mean - (now - a.t0), 0.0)
            for a in self.active.values()
        ]
        return f"~{fmt_duration(time_left(mean, len(self.todo), running, self.n_jobs))} left"

    def _say(self, what: str) -> None:
        print(
            f"[{self.grid}] {self.done}/{self.total} done, {len(self.active)} running, "
            f"{self.counts['failed']} failed, {self._eta()} | {what}",
            flush=True,
        )

    def _finish(self) -> int:
        if self.stop is not None and (self.counts["interrupted"] or self.todo):
            failed = (
                f", {len(self.failed)} failed ({', '.join(self.failed)})" if self.failed else ""
            )
            print(
                f"sweep stopped {self.stop}: {plural(self.checkpointed, 'run')} checkpointed, "
                f"{len(self.todo)} not started{failed}; run the same command again to continue",
                file=sys.stderr,
            )
            return self.stop_code
        summary = (
            f"sweep {self.grid}: {self.done}/{self.total} runs finished "
            f"({self.counts['diverged']} diverged)"
        )
        if self.failed or self.counts["interrupted"]:
            print(
                f"{summary}; {len(self.failed)} failed, {self.counts['interrupted']} "
                f"interrupted: {', '.join(self.failed) or '-'} (see their stdout.log; rerun "
                "the sweep to retry)",
                file=sys.stderr,
            )
            return FAILED_EXIT
        print(summary)
        return 0
