"""``archbench bench --concurrent K,...``: K runs sharing one device against one run alone.

A CIFAR-sized run leaves most of a large GPU idle, so a grid goes faster when several runs
share it (``compare --executor ray --gpus-per-run 1/K``). This measures by how much: for
each K, K processes train the same model at once on the same device, each timed exactly as
``bench`` times one run (a warm-up epoch, then timed epochs). The aggregate images/s is
what the device gives the grid; divided by one run's, it says what K buys.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import queue
from dataclasses import asdict, dataclass
from typing import Any

from archbench.bench import BenchResult, bench_one
from archbench.config import Config
from archbench.data.sources import CifarData
from archbench.errors import ArchbenchError
from archbench.models.registry import MODELS, ModelSpec

START_TIMEOUT_S = 600.0  # for every process to import torch and reach the start line
POLL_S = 5.0  # how often the parent checks that the K processes are still alive


@dataclass
class ConcurrentResult:
    model: str
    device: str
    runs: int  # K: processes training at once
    images_per_s_per_run: float  # mean over the K runs
    aggregate_images_per_s: float  # sum over the K runs
    vs_one_run: float | None  # aggregate / the aggregate of K = 1 (None without a K = 1 row)
    train_s_per_epoch: float  # mean over the K runs
    peak_memory_mib: float | None  # the largest of the K runs (CUDA only)


def parse_counts(text: str) -> list[int]:
    try:
        counts = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1 or len(set(counts)) != len(counts):
        raise ArchbenchError(f"--concurrent {text!r}: give distinct whole numbers >= 1, e.g. 1,2,4,8")
    return counts


def _one(spec: ModelSpec | None, cfg: Config, data: CifarData, epochs: int, threads: int, start, results) -> None:
    """One of the K processes: the parent's registered model spec (so models registered there exist
    here too; a model given by a spec is resolved here from the config), a share of the CPU threads,
    and a common start."""
    import torch

    if spec is not None:
        MODELS.setdefault(spec.name, spec)
    torch.set_num_threads(threads)
    try:
        start.wait(START_TIMEOUT_S)
        results.put(("ok", asdict(bench_one(cfg, data, epochs))))
    except BaseException as e:  # reported by the parent, which then stops
        results.put(("error", f"{type(e).__name__}: {e}"))


def _registered(cfg: Config) -> ModelSpec | None:
    """The registry's spec of the config's model, None when the config's own spec resolves it."""
    return MODELS.get(cfg.model) if cfg.model_spec is None else None


def measure(cfg: Config, data: CifarData, epochs: int, k: int) -> list[BenchResult]:
    """K runs of ``cfg`` at once, each in its own process; their results."""
    ctx = mp.get_context("spawn")  # fork would copy a parent whose torch threads are already running
    start, results = ctx.Barrier(k), ctx.Queue()
    threads = max(1, (os.cpu_count() or 1) // k)
    procs = [
        ctx.Process(target=_one, args=(_registered(cfg), cfg, data, epochs, threads, start, results), daemon=True)
        for _ in range(k)
    ]
    try:
        for p in procs:
            p.start()
    except (pickle.PicklingError, AttributeError, TypeError) as e:  # a model built by a lambda or a local class
        raise ArchbenchError(
            f"bench --concurrent: model {cfg.model!r} cannot be sent to another process ({e}); define its "
            f"constructor at the top level of an importable module"
        ) from e
    try:
        got = [_next_result(results, procs, k) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    errors = [text for status, text in got if status == "error"]
    if errors:
        raise ArchbenchError(f"bench --concurrent {k}: a run failed ({errors[0]})")
    return [BenchResult(**fields) for _, fields in got]


def _next_result(results, procs: list, k: int) -> tuple[str, Any]:
    """The next result a process reports; an error as soon as one dies without reporting."""
    while True:
        try:
            return results.get(timeout=POLL_S)
        except queue.Empty:
            dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            if dead:
                raise ArchbenchError(
                    f"bench --concurrent {k}: a run's process died (exit code {dead[0]}; out of memory?); "
                    f"try fewer runs at once"
                ) from None


def summarize(model: str, by_k: dict[int, list[BenchResult]]) -> list[ConcurrentResult]:
    one = by_k.get(1)
    base = sum(r.images_per_s for r in one) if one else None
    rows = []
    for k, rs in by_k.items():
        total = sum(r.images_per_s for r in rs)
        peaks = [r.peak_memory_mib for r in rs if r.peak_memory_mib is not None]
        rows.append(
            ConcurrentResult(
                model=model,
                device=rs[0].device,
                runs=k,
                images_per_s_per_run=total / k,
                aggregate_images_per_s=total,
                vs_one_run=total / base if base else None,
                train_s_per_epoch=sum(r.train_s_per_epoch for r in rs) / k,
                peak_memory_mib=max(peaks) if peaks else None,
            )
        )
    return rows


def table(rows: list[ConcurrentResult]) -> str:
    head = ("model", "runs at once", "img/s per run", "img/s together", "× one run", "train s/ep", "peak MiB each")
    cells = [head] + [
        (
            r.model,
            str(r.runs),
            f"{r.images_per_s_per_run:,.0f}",
            f"{r.aggregate_images_per_s:,.0f}",
            "—" if r.vs_one_run is None else f"{r.vs_one_run:.2f}",
            f"{r.train_s_per_epoch:.3f}",
            "—" if r.peak_memory_mib is None else f"{r.peak_memory_mib:,.0f}",
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(head))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def advice(rows: list[ConcurrentResult], on_gpu: bool) -> str:
    """Which K gave the most images/s, and the flag that packs that many runs per device."""
    best = max(rows, key=lambda r: r.aggregate_images_per_s)
    flag = (
        f"--gpus-per-run {1 / best.runs:.4g}"
        if on_gpu
        else f"--cpus-per-run {max(1, (os.cpu_count() or 1) // best.runs)}"
    )
    return (
        f"{best.model}: the most images/s together with {best.runs} run(s) at once"
        + (f" ({best.vs_one_run:.2f}× one run)" if best.vs_one_run else "")
        + f"; compare --executor ray {flag} packs that many per {'GPU' if on_gpu else 'machine'}"
    )
