"""The final evaluation of finished runs and the comparison folder's own files.

Each run's best weights (``best.pt``) and last finite epoch's weights (``last.pt``) are
evaluated on the same test images; the run folder then holds ``final.json`` (the figures)
and ``predictions.npz`` (per test image: index, label, and for both weights the
predicted class, loss and float16 logits). The compare folder holds ``comparison.json``,
the manifest of exactly which runs were compared (paths relative to it, so the folder can
be moved), and the study's table as ``comparison.md``/``.csv``.

Which weights judge a model: the last epoch's, unless a held-out split (``--val-split``)
selected the best epoch. Best-on-test weights stay in the table, labelled optimistic.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from archbench.analysis.stats import summary
from archbench.config import Config, read_json, resolve
from archbench.data.pipelines import test_pipeline
from archbench.data.sources import Cifar10
from archbench.errors import ArchbenchError
from archbench.io_utils import atomic_write_bytes, atomic_write_text
from archbench.models import count_parameters, forward_flops_per_image
from archbench.train import checkpoint, divergence
from archbench.train.engine import evaluate
from archbench.train.runner import CONFIG_NAME, exact_mask
from archbench.train.training import build_model

FINAL_NAME = "final.json"
PREDICTIONS_NAME = "predictions.npz"
MANIFEST_NAME = "comparison.json"
MANIFEST_FORMAT = 1
WEIGHTS = {"best": checkpoint.BEST, "last": checkpoint.LAST}


@dataclass(frozen=True)
class Evaluation:
    """One set of a run's weights on the test images."""

    epoch: int
    loss: float
    acc: float
    acc_exact: float | None


@dataclass(frozen=True)
class Result:
    """A run's final evaluation: what ``final.json`` holds."""

    model: str
    seed: int
    params: int
    flops_per_image: float  # one inference forward pass
    planned_epochs: int
    selected_on: str  # "test" (the study's choice) or "validation" (--val-split)
    best_val: float | None  # val accuracy of the best epoch
    best: Evaluation | None  # None when the run diverged before its first epoch ended
    last: Evaluation | None
    images: int
    images_exact: int | None
    diverged: dict | None  # {"epoch": E, "step": S or None}

    @property
    def final(self) -> Evaluation | None:
        """The weights that judge the model: best-by-validation with a held-out split, else the
        last; none for a diverged run, whose weights never finished the protocol."""
        if self.diverged is not None:
            return None
        return self.best if self.selected_on == "validation" else self.last

    @classmethod
    def from_dict(cls, d: dict) -> Result:
        d = dict(d)
        for k in WEIGHTS:
            d[k] = None if d.get(k) is None else Evaluation(**d[k])
        return cls(**d)


def _evaluate_weights(model, state, path: Path, cfg: Config, data: Cifar10, device: torch.device,
                      batch_size: int) -> dict:
    checkpoint.load_weights(model, state, path, cfg.model)
    return evaluate(model, test_pipeline(data, batch_size, device).test_batches(), device,
                    exact_mask(data, device), cfg.precision, keep_outputs=True)


def evaluate_run(run_dir: Path, data: Cifar10, device: torch.device, batch_size: int = 500,
                 write: bool = True) -> Result:
    """Evaluate a run's best and last weights on ``data``'s test split; with ``write``, save
    ``final.json`` and ``predictions.npz`` in the run folder."""
    run_dir = Path(run_dir)
    cfg = resolve(read_json(run_dir / CONFIG_NAME), device.type)
    diverged = divergence.read(run_dir)
    model = build_model(cfg, device)
    evals: dict[str, Evaluation | None] = {}
    arrays: dict[str, np.ndarray] = {"index": data.test_indices(), "label": data.y_test}
    if data.test_exact is not None:
        arrays["exact"] = data.test_exact
    best_val = None
    for name, file in WEIGHTS.items():
        path = run_dir / file
        if not path.is_file() and diverged is not None:
            evals[name] = None  # diverged in its first epoch: no weights were ever kept
            continue
        ckpt = checkpoint.load(path, device)
        ev = _evaluate_weights(model, ckpt["model"], path, cfg, data, device, batch_size)
        evals[name] = Evaluation(int(ckpt["epoch"]), ev["loss"], ev["acc"], ev.get("acc_exact"))
        if name == "best":
            best_val = float(ckpt["val_acc"])
        for key, tensor in ev["outputs"].items():
            arrays[f"{name}_{key}"] = tensor.cpu().numpy()
    n_exact = None if data.test_exact is None or data.test_exact.all() else int(data.test_exact.sum())
    result = Result(
        cfg.model, cfg.seed, count_parameters(model), forward_flops_per_image(model), cfg.epochs,
        "validation" if cfg.val_split else "test", best_val, evals["best"], evals["last"], len(data.y_test),
        n_exact, None if diverged is None else {"epoch": diverged["epoch"], "step": diverged["step"]})
    if write:  # predictions first: final.json never describes predictions that are not there
        write_predictions(run_dir, arrays if evals["last"] is not None else None)
        write_final(run_dir, result)
    return result


def write_final(run_dir: Path, result: Result) -> None:
    atomic_write_text(Path(run_dir) / FINAL_NAME, json.dumps(asdict(result), indent=2) + "\n")


def read_final(run_dir: Path) -> Result:
    path = Path(run_dir) / FINAL_NAME
    try:
        return Result.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise ArchbenchError(f"{run_dir}: no {FINAL_NAME}; run archbench compare to evaluate it") from None
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise ArchbenchError(f"{path} is damaged ({e}); run archbench compare again to rewrite it") from e


def write_predictions(run_dir: Path, arrays: dict[str, np.ndarray] | None) -> None:
    """predictions.npz, or none at all (an older one removed) when the run kept no weights."""
    if arrays is None:
        (Path(run_dir) / PREDICTIONS_NAME).unlink(missing_ok=True)
        return
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(Path(run_dir) / PREDICTIONS_NAME, buf.getvalue())


def read_predictions(run_dir: Path) -> dict[str, np.ndarray] | None:
    """A run's predictions.npz as plain arrays, or None when the run has none (it diverged at once)."""
    path = Path(run_dir) / PREDICTIONS_NAME
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise ArchbenchError(f"{path} is damaged ({e}); run archbench compare again to rewrite it") from e


# ---------------------------------------------------------------- the compare folder

@dataclass(frozen=True)
class RunRef:
    model: str
    seed: int
    dir: str  # relative to the compare folder, POSIX separators


@dataclass(frozen=True)
class Manifest:
    """``comparison.json``: which runs this comparison is made of, in order, and how it was made."""

    models: list[str]  # the order of the command line: Δ is first − each other
    runs: list[RunRef]
    min_effect_pp: float  # smallest accuracy difference of interest
    environment: dict

    def run_dirs(self, out_dir: Path) -> list[Path]:
        return [Path(out_dir) / r.dir for r in self.runs]


def relative_dir(run_dir: Path, out_dir: Path) -> str:
    return Path(os.path.relpath(Path(run_dir).resolve(), Path(out_dir).resolve())).as_posix()


def write_manifest(out_dir: Path, manifest: Manifest) -> None:
    body = {"format": MANIFEST_FORMAT, **asdict(manifest)}
    atomic_write_text(Path(out_dir) / MANIFEST_NAME, json.dumps(body, indent=2) + "\n")


def read_manifest(out_dir: Path) -> Manifest:
    path = Path(out_dir) / MANIFEST_NAME
    if not path.is_file():
        raise ArchbenchError(f"{out_dir}: no {MANIFEST_NAME}; run archbench compare --out {out_dir} first")
    try:
        d = json.loads(path.read_text())
        if d.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"format {d.get('format')!r}, expected {MANIFEST_FORMAT}")
        return Manifest(list(d["models"]), [RunRef(**r) for r in d["runs"]], float(d["min_effect_pp"]),
                        dict(d["environment"]))
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise ArchbenchError(f"{path} is damaged ({e}); run archbench compare --out {out_dir} again") from e


# ---------------------------------------------------------------- the study's table

def by_model(items: list, key=lambda r: r.model) -> dict[str, list]:
    """Items grouped per model, in first-seen order."""
    groups: dict[str, list] = {}
    for r in items:
        groups.setdefault(key(r), []).append(r)
    return groups


def _cell(values: list[float | None], fmt: str = ".2f") -> str:
    present = [v for v in values if v is not None]
    if not present:
        return "—"
    text = summary(present).text(fmt)
    return text if len(present) == len(values) else f"{text} ({len(present)} of {len(values)})"


def table_markdown(results: list[Result]) -> str:
    """The study's table, one row per model (mean ± std over seeds), with the final weights beside it."""
    groups = by_model(results)
    on_test = any(r.selected_on == "test" for r in results)
    exact = any(r.images_exact is not None for r in results)
    best_head = "Test Acc(%)²" if on_test else "Test Acc(%)"
    head = (["Model", "Test Loss", best_head, "#Params(M)", "Best Val(%)", "Final Acc(%)³"]
            + (["Final Exact(%)¹"] if exact else []) + ["n", "Diverged"])
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for model, rs in groups.items():
        best = [r.best for r in rs]
        final = [r.final for r in rs]
        best_val = _cell([r.best_val for r in rs])
        if len(rs) == 1 and rs[0].best is not None:
            best_val += f" (epoch {rs[0].best.epoch})"
        cells = [model, _cell([e and e.loss for e in best], ".4f"), _cell([e and e.acc for e in best]),
                 f"{rs[0].params / 1e6:.2f}", best_val, _cell([e and e.acc for e in final])]
        if exact:
            cells.append(_cell([e and e.acc_exact for e in final]))
        diverged = [r for r in rs if r.diverged]
        cells += [str(len(rs)), ", ".join(f"seed {r.seed} at epoch {r.diverged['epoch']}" for r in diverged) or "no"]
        lines.append("| " + " | ".join(cells) + " |")
    notes = []
    if any(len(rs) > 1 for rs in groups.values()):
        notes.append("Cells are mean ± sample standard deviation over n seeds.")
    if exact:
        r0 = next(r for r in results if r.images_exact is not None)
        notes.append(f"¹ On the {r0.images_exact:,} of {r0.images:,} test images that are pixel-exact; the "
                     f"others in this copy of the test set are JPEG fills.")
    if on_test:
        notes.append("² The best epoch's weights, picked on the test set itself (the study's choice): "
                     "optimistic. Use --val-split N to select on held-out training images.")
    notes.append("³ The weights that judge the model: " + (
        "the last epoch's." if on_test else "the best epoch's, selected on the held-out split."))
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


def selection_note(cfg: Config) -> str:
    if cfg.val_split:
        return (f"Best epochs are selected on {cfg.val_split:,} held-out training images; the test set is "
                f"used only for the final evaluation.")
    return ("Best epochs are selected on the test set, as in the study, so Best Val and the test "
            "accuracy of the best epoch are optimistic; verdicts use the last epoch's weights. "
            "Use --val-split N for an unbiased selection.")


def protocol_note(cfg: Config) -> str:
    return (f"Protocol: {cfg.epochs} epochs, batch {cfg.batch_size}, SGD momentum {cfg.momentum}, "
            f"weight decay {cfg.weight_decay}, MultiStepLR milestones {list(cfg.milestones)} gamma "
            f"{cfg.gamma}, {cfg.pipeline} pipeline, {cfg.precision}. {selection_note(cfg)}")


def write_outputs(out_dir: Path, results: list[Result], run_dirs: list[Path], note: str,
                  deltas: list[str]) -> None:
    """comparison.csv (one row per run, its folder relative to ``out_dir``) and comparison.md."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["model", "seed", "run_dir", "params", "best_epoch", "best_val", "best_test_loss", "best_test_acc",
                "last_epoch", "last_test_loss", "last_test_acc", "final_test_acc", "diverged_epoch"])
    for r, d in zip(results, run_dirs):
        b, last, f = r.best, r.last, r.final
        row = [r.model, r.seed, relative_dir(d, out_dir), r.params, b and b.epoch, r.best_val, b and b.loss,
               b and b.acc, last and last.epoch, last and last.loss, last and last.acc, f and f.acc,
               r.diverged and r.diverged["epoch"]]
        w.writerow(["" if v is None else v for v in row])
    atomic_write_text(Path(out_dir) / "comparison.csv", buf.getvalue())
    md = "# archbench comparison\n\n" + table_markdown(results) + "\n" + "\n".join(
        f"{d}  " for d in deltas) + f"\n\n{note}\n"
    atomic_write_text(Path(out_dir) / "comparison.md", md)
