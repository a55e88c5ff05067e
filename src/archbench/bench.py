"""``archbench bench``: time the training protocol per model and input pipeline.

Each (model, pipeline) pair trains from the same seed for one warm-up epoch (cuDNN
set-up, graph capture, compilation) and then ``epochs`` timed epochs, each a full
training pass plus an evaluation of the test split, exactly as a run does. Reported:
seconds per epoch for training and for evaluation, training images per second, the
warm-up's extra seconds, peak device memory, achieved training TFLOP/s (FLOPs counted
by ``torch.utils.flop_counter``) against the device's spec-sheet peak, and the
reference/fast speed-up.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from archbench.config import Config, resolve
from archbench.data.pipelines import build_pipeline
from archbench.data.sources import CifarData
from archbench.io_utils import atomic_write_text
from archbench.train.engine import Tally, evaluate, train_one_epoch
from archbench.train.training import (
    build_model,
    build_optimizer,
    build_step,
    check_device_options,
    input_format,
    resolve_device,
    step_mode,
)


@dataclass(frozen=True)
class Peak:
    """One GPU's dense spec-sheet TFLOP/s (NVIDIA's data sheets list twice these, "with sparsity")."""

    bf16: float  # bf16 tensor cores
    tf32: float  # TF32 tensor cores: what cuDNN runs fp32 convolutions on while cudnn.allow_tf32 is set
    fp32: float  # fp32 without tensor cores


_H100_SXM = Peak(bf16=989.4, tf32=494.7, fp32=66.9)  # H200 and GH200: the same compute
_H100_PCIE = Peak(bf16=756.5, tf32=378.0, fp32=51.2)
_HOPPER_NVL = Peak(bf16=835.5, tf32=417.5, fp32=60.0)  # H100 NVL and H200 NVL
_A100 = Peak(bf16=312.0, tf32=156.0, fp32=19.5)  # SXM4 and PCIe, 40 and 80 GB
# Keyed by the full name torch.cuda.get_device_name reports: a PCIe or NVL card must not be
# credited with an SXM part's peak because its name contains "H100".
DEVICE_PEAKS = {
    "NVIDIA H100 80GB HBM3": _H100_SXM,
    "NVIDIA H100 PCIe": _H100_PCIE,
    "NVIDIA H100 NVL": _HOPPER_NVL,
    "NVIDIA H200": _H100_SXM,
    "NVIDIA H200 NVL": _HOPPER_NVL,
    "NVIDIA GH200 480GB": _H100_SXM,
    "NVIDIA A100-SXM4-80GB": _A100,
    "NVIDIA A100-SXM4-40GB": _A100,
    "NVIDIA A100-PCIE-40GB": _A100,
    "NVIDIA A100 80GB PCIe": _A100,
}
STEP_MODES = ("eager", "graphs", "compile", "compile+graphs")


@dataclass
class BenchResult:
    model: str
    pipeline: str
    device: str
    precision: str
    step: str  # eager, graphs, compile or compile+graphs: what ran the timed steps
    train_images: int
    test_images: int
    epochs: int
    train_s_per_epoch: float
    eval_s_per_epoch: float
    images_per_s: float
    warmup_s: float
    peak_memory_mib: float | None
    train_tflops: float
    percent_of_peak: float | None
    peak_basis: str | None  # which spec-sheet peak percent_of_peak is of
    final_train_loss: float
    final_val_acc: float
    speedup: float | None = None  # reference epoch time / this epoch time (fast rows)


def synthetic_cifar(n_train: int, n_test: int, seed: int = 0, dataset: str = "cifar10") -> CifarData:
    """Random images of CIFAR's shape and a balanced label set of ``dataset``'s classes: timing
    needs no real data."""
    from archbench.data.datasets import get as get_dataset

    rng = np.random.default_rng(seed)
    classes = get_dataset(dataset).num_classes
    return CifarData(
        rng.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8),
        np.arange(n_train) % classes,
        rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8),
        np.arange(n_test) % classes,
        None,
        "synthetic",
        dataset=dataset,
    )


def train_flops_per_image(cfg: Config, device: torch.device) -> float:
    """FLOPs of one forward + backward pass per image, counted on a copy of the model."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model(cfg, device).train()
    x = torch.randn(cfg.batch_size, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (cfg.batch_size,), device=device)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    return counter.get_total_flops() / cfg.batch_size


def device_peak(device_name: str, precision: str, tf32_convolutions: bool) -> tuple[float, str] | None:
    """The dense spec-sheet peak a run in ``precision`` can reach on ``device_name``, and its label;
    None for a device not in ``DEVICE_PEAKS``."""
    peak = DEVICE_PEAKS.get(device_name)
    if peak is None:
        return None
    if precision == "bf16":
        return peak.bf16, f"{peak.bf16:g} TFLOP/s: bf16 tensor cores, dense"
    if tf32_convolutions:
        return peak.tf32, f"{peak.tf32:g} TFLOP/s: TF32 tensor cores, dense (cuDNN runs fp32 convolutions as TF32)"
    return peak.fp32, f"{peak.fp32:g} TFLOP/s: fp32 without tensor cores"


def step_config(cfg: Config, mode: str) -> Config:
    """``cfg`` with the training step ``mode`` (one of ``STEP_MODES``) asked for outright."""
    return cfg.replace(compile=mode.startswith("compile"), cuda_graphs=mode.endswith("graphs"))


def bench_one(cfg: Config, data: CifarData, epochs: int, warn: Callable[[str], None] = print) -> BenchResult:
    device = resolve_device(cfg.device)
    cfg = resolve(cfg, device.type)
    check_device_options(cfg, device)
    if cfg.compile:
        # Compiled code is cached per Python function, across models built from one class: each
        # row starts afresh, so that earlier rows' shapes and formats cannot use up its recompiles.
        torch._dynamo.reset()
    flops = train_flops_per_image(cfg, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model = build_model(cfg, device)
    opt = build_optimizer(model, cfg, device)
    step, tally = build_step(model, opt, cfg, device, warn=warn), Tally(device)
    fmt = input_format(cfg, device)
    pipe = build_pipeline(cfg.pipeline, data, cfg.batch_size, cfg.seed, device, cfg.workers, fmt)
    train_s, eval_s = [], []
    for epoch in range(epochs + 1):
        tr = train_one_epoch(model, pipe.train_batches(epoch), step, device, tally)
        ev = evaluate(model, pipe.test_batches(), device, None, cfg.precision)
        train_s.append(tr["seconds"])
        eval_s.append(ev["seconds"])
    t_train, t_eval = statistics.mean(train_s[1:]), statistics.mean(eval_s[1:])
    tflops = flops * pipe.train_size / t_train / 1e12
    name = _device_name(device)
    peak = device_peak(name, cfg.precision, torch.backends.cudnn.allow_tf32) if device.type == "cuda" else None
    return BenchResult(
        model=cfg.model,
        pipeline=cfg.pipeline,
        device=name,
        precision=cfg.precision,
        step=step_mode(step, cfg),
        train_images=pipe.train_size,
        test_images=pipe.test_size,
        epochs=epochs,
        train_s_per_epoch=t_train,
        eval_s_per_epoch=t_eval,
        images_per_s=pipe.train_size / t_train,
        warmup_s=max(0.0, train_s[0] + eval_s[0] - t_train - t_eval),
        peak_memory_mib=torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        train_tflops=tflops,
        percent_of_peak=100 * tflops / peak[0] if peak else None,
        peak_basis=peak[1] if peak else None,
        final_train_loss=tr["loss"],
        final_val_acc=ev["acc"],
    )


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def add_speedups(results: list[BenchResult]) -> None:
    """Each non-reference row's speed-up over the reference pipeline's row of the same model (and
    step, when the reference was timed with several)."""
    ref: dict[tuple[str, str | None], float] = {}
    for r in results:
        if r.pipeline == "reference":
            seconds = r.train_s_per_epoch + r.eval_s_per_epoch
            ref[r.model, r.step] = seconds
            ref.setdefault((r.model, None), seconds)
    for r in results:
        base = ref.get((r.model, r.step), ref.get((r.model, None)))
        if r.pipeline != "reference" and base is not None:
            r.speedup = base / (r.train_s_per_epoch + r.eval_s_per_epoch)


def table(results: list[BenchResult]) -> str:
    """The rows as an aligned text table, then what each "% peak" is a percentage of."""
    head = (
        "model",
        "pipeline",
        "precision",
        "step",
        "train s/ep",
        "eval s/ep",
        "img/s",
        "warm-up s",
        "peak MiB",
        "TFLOP/s",
        "% peak",
        "speed-up",
    )
    rows = [head]
    for r in results:
        rows.append(
            (
                r.model,
                r.pipeline,
                r.precision,
                r.step,
                f"{r.train_s_per_epoch:.3f}",
                f"{r.eval_s_per_epoch:.3f}",
                f"{r.images_per_s:,.0f}",
                f"{r.warmup_s:.1f}",
                "—" if r.peak_memory_mib is None else f"{r.peak_memory_mib:,.0f}",
                f"{r.train_tflops:.2f}",
                "—" if r.percent_of_peak is None else f"{r.percent_of_peak:.1f}",
                "—" if r.speedup is None else f"{r.speedup:.1f}x",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = [
        "  ".join(c.rjust(w) if i > 3 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines + peak_notes(results))


def peak_notes(results: list[BenchResult]) -> list[str]:
    """What "% peak" is of, per device and precision; or that a GPU's peak is not on record."""
    notes = []
    for r in results:
        if r.peak_basis is not None:
            note = f"% peak ({r.precision}): of the {r.device}'s {r.peak_basis}"
        elif r.device in ("cpu", "mps"):
            continue
        else:
            note = f"% peak: no spec-sheet peak on record for {r.device!r} (archbench.bench.DEVICE_PEAKS)"
        if note not in notes:
            notes.append(note)
    return notes


def write_json(results: list, path: Path, meta: dict, key: str = "results") -> None:
    """``meta`` and the rows (dataclasses: ``BenchResult`` or ``bench --concurrent``'s) under ``key``."""
    atomic_write_text(Path(path), json.dumps({**meta, key: [asdict(r) for r in results]}, indent=2) + "\n")
