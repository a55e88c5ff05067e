"""The study's final comparison: reload each run's best weights, evaluate them on the
same test data, and report ``Model | Test Loss | Test Acc(%) | #Params(M) | Best Val(%)``
with the accuracy difference in percentage points.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import torch

from archbench import checkpoint
from archbench.config import Config, read_json, resolve
from archbench.data.pipelines import test_pipeline
from archbench.data.sources import Cifar10
from archbench.engine import evaluate
from archbench.io_utils import atomic_write_text
from archbench.models import count_parameters
from archbench.runner import CONFIG_NAME, exact_mask
from archbench.training import build_model


@dataclass(frozen=True)
class Result:
    model: str
    test_loss: float
    test_acc: float
    params: int
    best_val: float
    best_epoch: int
    test_acc_exact: float | None
    images: int
    images_exact: int | None
    run_dir: str


def evaluate_best(run_dir: Path, data: Cifar10, device: torch.device, batch_size: int = 512) -> Result:
    """Reload ``best.pt`` of a run and evaluate it on ``data``'s test split."""
    run_dir = Path(run_dir)
    cfg = read_json(run_dir / CONFIG_NAME)
    path = run_dir / checkpoint.BEST
    ckpt = checkpoint.load(path, device)
    cfg = resolve(cfg, device.type)
    model = build_model(cfg, device)
    checkpoint.load_weights(model, ckpt["model"], path, cfg.model)
    ev = evaluate(model, test_pipeline(data, batch_size, device).test_batches(), device,
                  exact_mask(data, device), cfg.precision)
    return Result(cfg.model, ev["loss"], ev["acc"], count_parameters(model), ckpt["val_acc"],
                  ckpt["epoch"], ev.get("acc_exact"), ev["images"], ev.get("images_exact"), str(run_dir))


def _has_exact(results: list[Result]) -> bool:
    return any(r.test_acc_exact is not None for r in results)


def table_markdown(results: list[Result]) -> str:
    exact = _has_exact(results)
    head = ["Model", "Test Loss", "Test Acc(%)", "#Params(M)", "Best Val(%)"] + (["Exact Acc(%)¹"] if exact else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in results:
        cells = [r.model, f"{r.test_loss:.4f}", f"{r.test_acc:.2f}", f"{r.params / 1e6:.2f}",
                 f"{r.best_val:.2f} (epoch {r.best_epoch})"]
        if exact:
            cells.append("—" if r.test_acc_exact is None else f"{r.test_acc_exact:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    out = "\n".join(lines) + "\n"
    if exact:
        r0 = next(r for r in results if r.images_exact is not None)
        out += (f"\n¹ Accuracy on the {r0.images_exact:,} of {r0.images:,} test images that are "
                f"pixel-exact; the others in this copy of the test set are JPEG fills.\n")
    return out


def delta_lines(results: list[Result]) -> list[str]:
    """Δ accuracy of the first model against each other one, in percentage points."""
    a = results[0]
    return [f"Δ Accuracy ({a.model} − {b.model}) = {a.test_acc - b.test_acc:+.2f} pp" for b in results[1:]]


def protocol_note(cfg: Config) -> str:
    return (f"Protocol: {cfg.epochs} epochs, batch {cfg.batch_size}, SGD momentum {cfg.momentum}, "
            f"weight decay {cfg.weight_decay}, MultiStepLR milestones {list(cfg.milestones)} gamma "
            f"{cfg.gamma}, seed {cfg.seed}, {cfg.pipeline} pipeline. Best Val is selected on the test "
            f"set, as in the study.")


def write_outputs(out_dir: Path, results: list[Result], note: str) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["model", "test_loss", "test_acc", "params", "best_val", "best_epoch",
                "test_acc_exact", "images", "images_exact", "run_dir"])
    for r in results:
        w.writerow([r.model, f"{r.test_loss:.6f}", f"{r.test_acc:.4f}", r.params, f"{r.best_val:.4f}",
                    r.best_epoch, "" if r.test_acc_exact is None else f"{r.test_acc_exact:.4f}",
                    r.images, "" if r.images_exact is None else r.images_exact, r.run_dir])
    atomic_write_text(Path(out_dir) / "comparison.csv", buf.getvalue())
    md = "# archbench comparison\n\n" + table_markdown(results) + "\n" + "\n".join(
        f"{d}  " for d in delta_lines(results)) + f"\n\n{note}\n"
    atomic_write_text(Path(out_dir) / "comparison.md", md)
