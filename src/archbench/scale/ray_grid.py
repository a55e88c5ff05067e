"""The driver's side of ``compare --executor ray``: one Ray task per (model, seed) run.

The driver loads and verifies CIFAR-10 once and puts it in Ray's object store; workers read
it from there. It writes a marker file into the compare folder: a worker that can read it
writes the run folder in place (a shared filesystem, or one machine); any other worker
trains in a temp folder, and the run folder comes back inside the task's result and lands
here. Ray retries a task whose worker or node was lost (``--max-retries``); the retry
resumes from the run's ``last.pt`` when it sees the compare folder, or from the driver's
copy of the folder otherwise. Ctrl-C cancels every task: each saves its finished epochs
(and, away from the compare folder, sends them back) before it stops.
"""

from __future__ import annotations

import os
import secrets
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from archbench.config import Config
from archbench.data.sources import CifarData
from archbench.errors import ArchbenchError
from archbench.io_utils import atomic_write_text, make_dirs
from archbench.scale import folders
from archbench.scale.task import FAILED, FILES_MODES, INTERRUPTED, Job, Outcome, Progress, reads_marker, run_job

RAY_MISSING = (
    "--executor ray needs Ray, which is not installed here: pip install -e '.[ray]' (or pip install ray), "
    "or use --executor local"
)
POLL_S = 0.5  # how often the driver collects progress while it waits for tasks
CANCEL_GRACE_S = 120.0  # how long cancelled tasks get to save their epochs and send their folders back
MARKER_PREFIX = ".archbench-driver-"


@dataclass(frozen=True)
class RayOptions:
    """How runs are spread over Ray: where the cluster is, and what each run reserves."""

    address: str | None = None  # None: start a private Ray instance on this machine
    gpus_per_run: float | None = None  # None: 1 where the cluster has GPUs, else 0; 0.25 packs 4 runs on a GPU
    cpus_per_run: float = 1.0
    max_retries: int = 3  # attempts after a lost worker or node
    files: str = "auto"  # auto | shared | return: where workers write run folders (FILES_MODES)
    setup: str | None = None  # "module.function" every worker calls first, e.g. to register a model

    def check(self) -> RayOptions:
        if self.gpus_per_run is not None and not (0 <= self.gpus_per_run and _fits_gpu(self.gpus_per_run)):
            raise ArchbenchError(
                f"--gpus-per-run {self.gpus_per_run:g}: use 0, a fraction of one GPU (0.5, 0.25, ...) or a whole number"
            )
        if not self.cpus_per_run > 0:
            raise ArchbenchError(f"--cpus-per-run {self.cpus_per_run:g}: use a number > 0")
        if self.max_retries < 0:
            raise ArchbenchError(f"--max-retries {self.max_retries}: use 0 or more")
        if self.files not in FILES_MODES:
            raise ArchbenchError(f"--ray-files {self.files!r}: use one of {', '.join(FILES_MODES)}")
        return self


def _fits_gpu(g: float) -> bool:
    """Ray packs fractions of one GPU, or takes whole GPUs; 1.5 GPUs is neither."""
    return g <= 1 or float(g).is_integer()


def import_ray(options: RayOptions):
    """Ray, imported after setting what a private instance needs (Ray reads it on import)."""
    if options.address is None:
        # A private instance serves this machine only: it listens on 127.0.0.1 and reports no
        # usage statistics, unless the user's environment says otherwise.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
    except ImportError as e:
        raise ArchbenchError(RAY_MISSING) from e
    return ray


@contextmanager
def ray_session(options: RayOptions) -> Iterator:
    """Ray, connected to ``options.address`` or to a private instance on this machine."""
    ray = import_ray(options)
    if ray.is_initialized():  # the caller's own session (a notebook, a script): used and left running
        if options.address or options.setup:
            raise ArchbenchError(
                "Ray is already initialized in this process, so the Ray address and worker set-up cannot be "
                "applied; leave them out, or call ray.shutdown() first"
            )
        yield ray
        return
    runtime_env = {"worker_process_setup_hook": options.setup} if options.setup else None
    try:
        if options.address is None:
            ray.init(include_dashboard=False, log_to_driver=False, runtime_env=runtime_env)
        else:
            ray.init(address=options.address, log_to_driver=False, runtime_env=runtime_env)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = options.address or "a private instance on this machine"
        raise ArchbenchError(
            f"could not start Ray at {where} ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
            f"check --ray-address (a cluster started with 'ray start --head'), or leave it out"
        ) from e
    try:
        yield ray
    finally:
        ray.shutdown()


def reservation(ray, options: RayOptions, cfg: Config) -> tuple[float, float]:
    """(CPUs, GPUs) each run reserves, after checking that some node of the cluster has them:
    Ray would otherwise keep the tasks pending forever."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    most_cpus = max((r.get("CPU", 0.0) for r in nodes), default=0.0)
    most_gpus = max((r.get("GPU", 0.0) for r in nodes), default=0.0)
    gpus = options.gpus_per_run if options.gpus_per_run is not None else (1.0 if most_gpus > 0 else 0.0)
    if gpus > most_gpus:
        raise ArchbenchError(
            f"--gpus-per-run {gpus:g}: no node of the Ray cluster has that many GPUs (the most is {most_gpus:g}); "
            f"lower it, or pass --gpus-per-run 0 to train on CPUs"
        )
    if options.cpus_per_run > most_cpus:
        raise ArchbenchError(
            f"--cpus-per-run {options.cpus_per_run:g}: no node of the Ray cluster has that many CPUs "
            f"(the most is {most_cpus:g}); lower it"
        )
    if cfg.device == "cuda" and gpus == 0:
        raise ArchbenchError("--device cuda with --gpus-per-run 0: reserve a GPU share per run, or use --device cpu")
    if cfg.device in ("cpu", "mps") and gpus > 0:
        raise ArchbenchError(
            f"--device {cfg.device} with --gpus-per-run {gpus:g} reserves GPUs the runs do not use; "
            f"pass --gpus-per-run 0"
        )
    return options.cpus_per_run, gpus


def _nodes_missing_the_folder(ray, marker: Path, token: str) -> int:
    """How many live nodes cannot read the driver's marker (0: every run can be written in place)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    remote = ray.remote(num_cpus=0)(reads_marker)
    refs = [
        remote.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
            str(marker), token
        )
        for n in ray.nodes()
        if n.get("Alive")
    ]
    return sum(not seen for seen in ray.get(refs))


class Display:
    """The driver's console: the runs' own log lines (prefixed with the run), their starts,
    retries and ends, and on a terminal one bar of the grid's epochs."""

    def __init__(self, log: Callable[[str], None], total_epochs: int, quiet: bool):
        self.attempts: dict[str, int] = {}
        self.epochs: dict[str, int] = {}
        self.bar = None
        if not quiet and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total_epochs, desc="grid", unit="epoch", dynamic_ncols=True)
        self._log = log

    def log(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line)
        else:
            self._log(line)

    def event(self, label: str, kind: str, payload) -> None:
        if kind == "start":
            n = self.attempts[label] = self.attempts.get(label, 0) + 1
            again = f"attempt {n} (the previous worker was lost), " if n > 1 else ""
            files = "in place" if payload["shared"] else "in a temp folder, sent back when done"
            self.log(f"{label}: {again}started on {payload['where']}, writing {files}")
        elif kind == "log":
            self.log(f"{label}: {payload}")
        elif kind == "epoch":
            self.epochs[label] = max(self.epochs.get(label, 0), payload["epoch"])
            if self.bar is not None:
                self.bar.n = sum(self.epochs.values())
                self.bar.set_postfix_str(f"{label} epoch {payload['epoch']} val {payload['val_acc']:.2f}%")

    def outcome(self, o: Outcome) -> None:
        text = o.message.splitlines()[0] if o.message else ""
        self.log(f"{o.label}: {o.status}" + (f" — {text}" if text and o.status == FAILED else ""))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_grid(
    grid: list[tuple[Config, Path]],
    data: CifarData,
    out: Path,
    options: RayOptions,
    log: Callable[[str], None] = print,
    on_event: Callable[[str, str, object], None] | None = None,
) -> list[Outcome]:
    """Train every (config, run folder) of the grid as a Ray task; the outcomes in grid order.

    ``on_event(label, kind, payload)`` sees every progress event as the driver receives it.
    """
    options.check()
    out = Path(out).resolve()
    grid = [(for_workers(cfg, out), run_dir) for cfg, run_dir in grid]
    with ray_session(options) as ray:
        cpus, gpus = reservation(ray, options, grid[0][0])
        make_dirs(out)  # only once the cluster can take the runs: a refusal leaves no folder behind
        token = secrets.token_hex(16)
        marker = out / f"{MARKER_PREFIX}{token}"
        atomic_write_text(marker, token)
        try:
            missing = _nodes_missing_the_folder(ray, marker, token) if options.files == "auto" else 0
            ship = options.files == "return" or missing > 0
            if ship:
                _refuse_stores_on_this_machine(grid[0][0])
            if options.files == "return":
                log("ray: every run folder is written in a temp folder and sent back here")
            elif missing:
                log(f"ray: {missing} node(s) do not see {out}: their runs are sent back here when they end")
            return _run(ray, grid, data, out, options, (cpus, gpus), (marker, token, ship), log, on_event)
        finally:
            marker.unlink(missing_ok=True)


def for_workers(cfg: Config, out: Path) -> Config:
    """``cfg`` with its paths absolute, as the driver means them: a worker's working folder is another."""
    from archbench.train.trackers import mlflow_uri

    cfg = cfg.replace(out=str(out))
    return cfg.replace(mlflow=mlflow_uri(cfg)) if cfg.mlflow else cfg


def _refuse_stores_on_this_machine(cfg: Config) -> None:
    from archbench.train.trackers import store_on_this_machine

    if cfg.mlflow and store_on_this_machine(cfg.mlflow):
        raise ArchbenchError(
            f"--mlflow {cfg.mlflow} is a store in this machine's files, which some Ray workers do not see; "
            f"use an MLflow tracking server (--mlflow http://...), or an --out every node shares"
        )


def _run(ray, grid, data, out: Path, options: RayOptions, share, where, log, on_event) -> list[Outcome]:
    cpus, gpus = share
    marker, token, ship = where
    have = ray.cluster_resources()
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    log(
        f"ray: {len(grid)} runs on {nodes} node(s) with {have.get('CPU', 0):g} CPUs and {have.get('GPU', 0):g} GPUs; "
        f"each run reserves {cpus:g} CPU(s) and {gpus:g} GPU(s); a lost worker is retried up to "
        f"{options.max_retries} times"
    )
    data_ref = ray.put(data)
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # on the driver's own node: losing a worker node must not lose the progress of the others
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    progress = ray.remote(Progress).options(num_cpus=0, scheduling_strategy=here, max_restarts=-1).remote()
    task = ray.remote(run_job).options(
        num_cpus=cpus, num_gpus=gpus, max_retries=options.max_retries, retry_exceptions=False
    )
    jobs = {}
    for cfg, run_dir in grid:
        run_dir = Path(run_dir).resolve()
        label = run_dir.relative_to(out).as_posix() if run_dir.is_relative_to(out) else str(run_dir)
        start = [ray.put(folders.pack(run_dir))] if ship else []
        job = Job(cfg, str(run_dir), label, str(marker), token, options.files, start, max(1, int(cpus)))
        jobs[task.remote(job, data_ref, progress)] = job
    display = Display(log, sum(cfg.epochs for cfg, _ in grid), grid[0][0].quiet)
    outcomes: dict[str, Outcome] = {}
    pending: list = list(jobs)
    ready: list = []  # tasks that ended, their outcomes not yet taken in
    try:
        while pending or ready:
            if not ready:
                ready, pending = ray.wait(pending, num_returns=len(pending), timeout=POLL_S)
            _show(ray, progress, display, on_event)
            while ready:
                outcomes[jobs[ready[0]].label] = _land(ray, ready[0], jobs[ready[0]], display)
                ready.pop(0)
    except BaseException:
        _cancel(ray, ready + pending, jobs, display)  # the ended ones too: their folders still land
        raise
    finally:
        _show(ray, progress, display, None)
        display.close()
    return [outcomes[job.label] for job in jobs.values()]


def _show(ray, progress, display: Display, on_event) -> None:
    try:
        events = ray.get(progress.drain.remote())
    except ray.exceptions.RayError as e:  # the mailbox restarts; the runs and their outcomes go on
        display.log(f"ray: some progress reports were lost ({type(e).__name__}); the runs go on")
        return
    for label, kind, payload in events:
        display.event(label, kind, payload)
        if on_event is not None:
            on_event(label, kind, payload)


def _lost(ray, job: Job, e: Exception) -> Outcome:
    """The outcome of a task that never returned one."""
    if isinstance(e, ray.exceptions.RayTaskError) and getattr(e, "cause", None) is not None:
        # raised on the worker outside archbench's own handling (its set-up, its arguments): not retried
        text = str(e.cause).strip()
        why = f"{type(e.cause).__name__}: {text.splitlines()[0] if text else ''}"
        return Outcome(
            job.label,
            FAILED,
            f"the task failed on its worker ({why}); check that archbench is installed there, in the same version",
            None,
            "",
            "",
        )
    return Outcome(
        job.label,
        FAILED,
        f"its worker or node was lost in every attempt ({type(e).__name__}); finished epochs are kept — "
        f"run the same compare again to continue it",
        None,
        "",
        "",
    )


def _land(ray, ref, job: Job, display: Display) -> Outcome:
    """A finished task's outcome; a run folder it sent back is written into the compare folder,
    unless that folder holds more epochs than the one sent back."""
    try:
        outcome = ray.get(ref)
    except ray.exceptions.TaskCancelledError:
        outcome = Outcome(job.label, INTERRUPTED, "cancelled before it started", None, "", "")
    except ray.exceptions.RayError as e:
        outcome = _lost(ray, job, e)
    if outcome.archive:
        try:
            display.log(f"{job.label}: {_land_archive(outcome.archive, Path(job.run_dir))}")
        except (ArchbenchError, OSError) as e:
            why = str(e) if isinstance(e, ArchbenchError) else f"{type(e).__name__}: {e}"
            outcome = replace(outcome, status=FAILED, message=f"its run folder could not land: {why}")
    display.outcome(outcome)
    return outcome


def _land_archive(archive: bytes, run_dir: Path) -> str:
    from archbench.train.lock import run_lock

    make_dirs(run_dir)
    with run_lock(run_dir):  # no other archbench process is writing the folder meanwhile
        here, there = folders.epochs_on_disk(run_dir), folders.epochs_in(archive)
        if here > there:
            return f"kept {run_dir} ({here} epochs): the folder sent back holds {there}"
        n = folders.unpack(archive, run_dir)
    return f"{n} files ({folders.size_text(len(archive))}) landed in {run_dir}"


def _cancel(ray, pending: list, jobs: dict, display: Display) -> None:
    """Cancel the tasks still running; each saves its finished epochs, and those trained away
    from the compare folder are landed here. A second Ctrl-C stops waiting for them."""
    if not pending:
        return
    display.log(f"stopping {len(pending)} runs: each saves its finished epochs first")
    for ref in pending:
        ray.cancel(ref)
    deadline = time.monotonic() + CANCEL_GRACE_S
    try:
        while pending and time.monotonic() < deadline:
            done, pending = ray.wait(pending, num_returns=len(pending), timeout=POLL_S)
            for ref in done:
                _land(ray, ref, jobs[ref], display)
    except KeyboardInterrupt:
        pass
    for ref in pending:
        ray.cancel(ref, force=True)
    if pending:
        display.log(f"{len(pending)} runs did not stop in time; their epochs up to the last checkpoint are kept")
