"""The study's final comparison: reload each run's best weights, evaluate them on the
same test data, and report ``Model | Test Loss | Test Acc(%) | #Params(M) | Best Val(%)``
per model (mean ± std over seeds) with the accuracy difference in percentage points and,
given several seeds, its Welch confidence interval.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass
from dataclasses import fields as dataclass_fields
from pathlib import Path

import torch

from archbench.train import checkpoint
from archbench.config import Config, read_json, resolve
from archbench.data.pipelines import test_pipeline
from archbench.data.sources import Cifar10
from archbench.train.engine import evaluate
from archbench.io_utils import atomic_write_text
from archbench.models import count_parameters
from archbench.train.runner import CONFIG_NAME, exact_mask
from archbench.analysis.stats import summary, welch
from archbench.train.training import build_model


FINAL_NAME = "final.json"  # the best weights' test evaluation, written into each run folder


@dataclass(frozen=True)
class Result:
    model: str
    seed: int
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
    return Result(cfg.model, cfg.seed, ev["loss"], ev["acc"], count_parameters(model), ckpt["val_acc"],
                  ckpt["epoch"], ev.get("acc_exact"), ev["images"], ev.get("images_exact"), str(run_dir))


def write_final(result: Result) -> None:
    atomic_write_text(Path(result.run_dir) / FINAL_NAME, json.dumps(asdict(result), indent=2) + "\n")


def read_final(run_dir: Path) -> Result | None:
    path = Path(run_dir) / FINAL_NAME
    return Result(**json.loads(path.read_text())) if path.is_file() else None


def by_model(results: list[Result]) -> dict[str, list[Result]]:
    """Results grouped per model, in first-seen order."""
    groups: dict[str, list[Result]] = {}
    for r in results:
        groups.setdefault(r.model, []).append(r)
    return groups


def table_markdown(results: list[Result]) -> str:
    """The study's table, one row per model: mean ± std over its seeds, and n."""
    groups = by_model(results)
    exact = any(r.test_acc_exact is not None for r in results)
    head = ["Model", "Test Loss", "Test Acc(%)", "#Params(M)", "Best Val(%)"] + \
        (["Exact Acc(%)¹"] if exact else []) + ["n"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for model, rs in groups.items():
        best = summary([r.best_val for r in rs]).text()
        if len(rs) == 1:
            best += f" (epoch {rs[0].best_epoch})"
        cells = [model, summary([r.test_loss for r in rs]).text(".4f"), summary([r.test_acc for r in rs]).text(),
                 f"{rs[0].params / 1e6:.2f}", best]
        if exact:
            ex = [r.test_acc_exact for r in rs if r.test_acc_exact is not None]
            cells.append(summary(ex).text() if ex else "—")
        cells.append(str(len(rs)))
        lines.append("| " + " | ".join(cells) + " |")
    out = "\n".join(lines) + "\n"
    if any(len(rs) > 1 for rs in groups.values()):
        out += "\nCells are mean ± sample standard deviation over n seeds.\n"
    if exact:
        r0 = next(r for r in results if r.images_exact is not None)
        out += (f"\n¹ Accuracy on the {r0.images_exact:,} of {r0.images:,} test images that are "
                f"pixel-exact; the others in this copy of the test set are JPEG fills.\n")
    return out


def delta_lines(results: list[Result]) -> list[str]:
    """Δ test accuracy of the first model against each other one, in percentage points."""
    groups = list(by_model(results).items())
    (a, ra) = groups[0]
    return [f"Δ Accuracy ({a} − {b}) = {welch([r.test_acc for r in ra], [r.test_acc for r in rb]).text()}"
            for b, rb in groups[1:]]


def selection_note(cfg: Config) -> str:
    if cfg.val_split:
        return (f"Best epochs are selected on {cfg.val_split:,} held-out training images; the test set is "
                f"used only for the final evaluation.")
    return ("Best epochs are selected on the test set, as in the study, so Best Val and the test "
            "accuracy of the best epoch are optimistic; use --val-split N for an unbiased selection.")


def protocol_note(cfg: Config) -> str:
    return (f"Protocol: {cfg.epochs} epochs, batch {cfg.batch_size}, SGD momentum {cfg.momentum}, "
            f"weight decay {cfg.weight_decay}, MultiStepLR milestones {list(cfg.milestones)} gamma "
            f"{cfg.gamma}, {cfg.pipeline} pipeline, {cfg.precision}. {selection_note(cfg)}")


def write_outputs(out_dir: Path, results: list[Result], note: str) -> None:
    buf = io.StringIO()
    fields = [f.name for f in dataclass_fields(Result)]
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(fields)
    for r in results:
        w.writerow(["" if getattr(r, f) is None else getattr(r, f) for f in fields])
    atomic_write_text(Path(out_dir) / "comparison.csv", buf.getvalue())
    md = "# archbench comparison\n\n" + table_markdown(results) + "\n" + "\n".join(
        f"{d}  " for d in delta_lines(results)) + f"\n\n{note}\n"
    atomic_write_text(Path(out_dir) / "comparison.md", md)
