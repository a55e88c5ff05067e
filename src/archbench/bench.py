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
from archbench.train.training import build_model, build_optimizer, build_step, check_device_options, resolve_device

# Dense spec-sheet peaks in TFLOP/s: bf16 tensor cores, and TF32 (cuDNN runs fp32 convs as TF32).
DEVICE_PEAKS = {
    "H200": {"bf16": 989.0, "fp32": 494.7},
    "H100": {"bf16": 989.0, "fp32": 494.7},
    "A100": {"bf16": 312.0, "fp32": 156.0},
}


@dataclass
class BenchResult:
    model: str
    pipeline: str
    device: str
    precision: str
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


def device_peak(device: torch.device, precision: str) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((p[precision] for key, p in DEVICE_PEAKS.items() if key in name), None)


def bench_one(cfg: Config, data: CifarData, epochs: int) -> BenchResult:
    device = resolve_device(cfg.device)
    cfg = resolve(cfg, device.type)
    check_device_options(cfg, device)
    flops = train_flops_per_image(cfg, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model = build_model(cfg, device)
    opt = build_optimizer(model, cfg, device)
    step, tally = build_step(model, opt, cfg, device), Tally(device)
    pipe = build_pipeline(cfg.pipeline, data, cfg.batch_size, cfg.seed, device, cfg.workers)
    train_s, eval_s = [], []
    for epoch in range(epochs + 1):
        tr = train_one_epoch(model, pipe.train_batches(epoch), step, device, tally)
        ev = evaluate(model, pipe.test_batches(), device, None, cfg.precision)
        train_s.append(tr["seconds"])
        eval_s.append(ev["seconds"])
    t_train, t_eval = statistics.mean(train_s[1:]), statistics.mean(eval_s[1:])
    tflops = flops * pipe.train_size / t_train / 1e12
    peak = device_peak(device, cfg.precision)
    return BenchResult(
        model=cfg.model,
        pipeline=cfg.pipeline,
        device=_device_name(device),
        precision=cfg.precision,
        train_images=pipe.train_size,
        test_images=pipe.test_size,
        epochs=epochs,
        train_s_per_epoch=t_train,
        eval_s_per_epoch=t_eval,
        images_per_s=pipe.train_size / t_train,
        warmup_s=max(0.0, train_s[0] + eval_s[0] - t_train - t_eval),
        peak_memory_mib=torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        train_tflops=tflops,
        percent_of_peak=100 * tflops / peak if peak else None,
        final_train_loss=tr["loss"],
        final_val_acc=ev["acc"],
    )


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def add_speedups(results: list[BenchResult]) -> None:
    ref = {r.model: r.train_s_per_epoch + r.eval_s_per_epoch for r in results if r.pipeline == "reference"}
    for r in results:
        if r.pipeline != "reference" and r.model in ref:
            r.speedup = ref[r.model] / (r.train_s_per_epoch + r.eval_s_per_epoch)


def table(results: list[BenchResult]) -> str:
    head = (
        "model",
        "pipeline",
        "precision",
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
        "  ".join(c.rjust(w) if i > 2 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_json(results: list, path: Path, meta: dict, key: str = "results") -> None:
    """``meta`` and the rows (dataclasses: ``BenchResult`` or ``bench --concurrent``'s) under ``key``."""
    atomic_write_text(Path(path), json.dumps({**meta, key: [asdict(r) for r in results]}, indent=2) + "\n")
