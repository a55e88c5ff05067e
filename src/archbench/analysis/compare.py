"""The final evaluation of finished runs and the comparison folder's own files.

Each run's best weights (``best.pt``) and last finite epoch's weights (``last.pt``) are
evaluated on the same test images; the run folder then holds ``final.json`` (the figures)
and ``predictions.npz`` (per test image: index, label, and for both weights the
predicted class, loss and float16 logits). The compare folder holds ``comparison.json``,
the manifest of exactly which runs were compared (paths relative to it, so the folder can
be moved), and the study's table as ``comparison.md``/``.csv``. The readers check every
field of what they read (``archbench.schema``) and say which file to rewrite, and how.

Which weights judge a model: the last epoch's, unless a held-out split (``--val-split``)
selected the best epoch. Best-on-test weights stay in the table, labelled optimistic.
"""

from __future__ import annotations

import csv
import io
import json
import os
import zipfile
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch

from archbench.analysis.stats import summary
from archbench.config import Config, read_json, resolve
from archbench.data.pipelines import test_pipeline
from archbench.data.sources import CifarData
from archbench.errors import ArchbenchError
from archbench.io_utils import atomic_write_bytes, atomic_write_text, os_error
from archbench.io_utils import read_json as read_json_file
from archbench.models import count_parameters, forward_flops_per_image
from archbench.schema import PERCENT, STRING, TEXT, Fields, Kind, integer, number, one_of, or_null
from archbench.train import checkpoint, divergence
from archbench.train.engine import evaluate
from archbench.train.model_record import refuse_changed_model_of
from archbench.train.runner import CONFIG_NAME, exact_mask
from archbench.train.training import build_model, input_format

FINAL_NAME = "final.json"
PREDICTIONS_NAME = "predictions.npz"
MANIFEST_NAME = "comparison.json"
MANIFEST_FORMAT = 1
WEIGHTS = {"best": checkpoint.BEST, "last": checkpoint.LAST}
RUN_FILES_FIX = "run archbench compare again to rewrite it"  # it re-evaluates every run it lists


@dataclass(frozen=True)
class Evaluation:
    """One set of a run's weights on the test images."""

    epoch: int
    loss: float
    acc: float
    acc_exact: float | None


# What final.json's evaluations hold; acc_exact is null when every test image is pixel-exact.
EVALUATION = {"epoch": integer(1), "loss": number(0), "acc": PERCENT, "acc_exact": or_null(PERCENT)}


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
    def from_dict(cls, d: Any, where: str = FINAL_NAME, fix: str = RUN_FILES_FIX) -> Result:
        """A Result from final.json's parsed contents, every field checked; ``where`` names the file."""
        f = Fields(d, where, fix)
        evals = {}
        for name in WEIGHTS:
            e = f.sub(name, nullable=True)
            evals[name] = None if e is None else Evaluation(**{k: e.get(k, kind) for k, kind in EVALUATION.items()})
        dv = f.sub("diverged", nullable=True)
        diverged = (
            None if dv is None else {"epoch": dv.get("epoch", integer(1)), "step": dv.get("step", or_null(integer(1)))}
        )
        images = f.get("images", integer(1))
        r = cls(
            f.get("model", TEXT),
            f.get("seed", integer(0)),
            f.get("params", integer(1)),
            f.get("flops_per_image", number(0)),
            f.get("planned_epochs", integer(1)),
            f.get("selected_on", one_of("test", "validation")),
            f.get("best_val", or_null(PERCENT)),
            evals["best"],
            evals["last"],
            images,
            f.get("images_exact", or_null(integer(0, images))),
            diverged,
        )
        r._check_epochs(f)
        return r

    def _check_epochs(self, f: Fields) -> None:
        """The weights it describes are the ones the run kept: the best epoch's and the last
        finished one's (the planned last, or the one before the run diverged; none if that was
        its first)."""
        f.require(
            (self.best is None) == (self.last is None) == (self.best_val is None),
            "fields 'best', 'last' and 'best_val' must all be set, or all null (no weights kept)",
        )
        kept = self.planned_epochs if self.diverged is None else self.diverged["epoch"] - 1
        f.require(
            0 <= kept <= self.planned_epochs,
            f"field 'diverged.epoch' is {kept + 1}, after the planned {self.planned_epochs} epochs",
        )
        last = 0 if self.last is None else self.last.epoch
        run = "a finished run" if self.diverged is None else f"a run that diverged in epoch {kept + 1}"
        f.require(
            last == kept, f"field 'last' describes epoch {last or 'none'}, but {run} keeps epoch {kept or 'none'}"
        )
        f.require(
            self.best is None or self.best.epoch <= last,
            f"field 'best.epoch' is {self.best and self.best.epoch}, after the last epoch {last}",
        )


def _evaluate_weights(
    model, state, path: Path, cfg: Config, data: CifarData, device: torch.device, batch_size: int
) -> dict:
    checkpoint.load_weights(model, state, path, cfg.model)
    return evaluate(
        model,
        test_pipeline(data, batch_size, device, input_format(cfg, device)).test_batches(),
        device,
        exact_mask(data, device),
        cfg.precision,
        keep_outputs=True,
    )


def evaluate_run(
    run_dir: Path, data: CifarData, device: torch.device, batch_size: int = 500, write: bool = True
) -> Result:
    """Evaluate a run's best and last weights on ``data``'s test split; with ``write``, save
    ``final.json`` and ``predictions.npz`` in the run folder."""
    run_dir = Path(run_dir)
    cfg = resolve(read_json(run_dir / CONFIG_NAME), device.type)
    if data.dataset != cfg.dataset:
        raise ArchbenchError(
            f"{run_dir} was trained on {cfg.dataset}, but the test images given are {data.dataset}'s "
            f"({data.source}); pass --dataset {cfg.dataset}"
        )
    diverged = divergence.read(run_dir)
    refuse_changed_model_of(run_dir, cfg)
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
        cfg.model,
        cfg.seed,
        count_parameters(model),
        forward_flops_per_image(model),
        cfg.epochs,
        "validation" if cfg.val_split else "test",
        best_val,
        evals["best"],
        evals["last"],
        len(data.y_test),
        n_exact,
        None if diverged is None else {"epoch": diverged["epoch"], "step": diverged["step"]},
    )
    if write:  # predictions first: final.json never describes predictions that are not there
        write_predictions(run_dir, arrays if evals["last"] is not None else None)
        write_final(run_dir, result)
    return result


def write_final(run_dir: Path, result: Result) -> None:
    atomic_write_text(Path(run_dir) / FINAL_NAME, json.dumps(asdict(result), indent=2) + "\n")


def read_final(run_dir: Path) -> Result:
    path = Path(run_dir) / FINAL_NAME
    if not os.path.lexists(path):
        raise ArchbenchError(f"{run_dir}: no {FINAL_NAME}; run archbench compare to evaluate it")
    return Result.from_dict(read_json_file(path, "the run's final evaluation", RUN_FILES_FIX), str(path))


def write_predictions(run_dir: Path, arrays: dict[str, np.ndarray] | None) -> None:
    """predictions.npz, or none at all (an older one removed) when the run kept no weights."""
    if arrays is None:
        (Path(run_dir) / PREDICTIONS_NAME).unlink(missing_ok=True)
        return
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(Path(run_dir) / PREDICTIONS_NAME, buf.getvalue())


def prediction_arrays(num_classes: int) -> dict[str, tuple[str, tuple]]:
    """predictions.npz's arrays: dtype kinds (integer, float, bool) and the shape of one test image's row."""
    return {
        "index": ("iu", ()),
        "label": ("iu", ()),
        **{
            f"{w}_{k}": kind
            for w in WEIGHTS
            for k, kind in (("pred", ("iu", ())), ("loss", ("f", ())), ("logits", ("f", (num_classes,))))
        },
    }


OPTIONAL_PREDICTIONS = {"exact": ("b", ())}  # only when some test images are not pixel-exact copies
# How numpy and zipfile report a damaged archive (an OSError is the file system's, reported as such).
_DAMAGED_ARCHIVE = (ValueError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError)


def read_predictions(run_dir: Path, num_classes: int) -> dict[str, np.ndarray] | None:
    """A run's checked predictions.npz as plain arrays (those named in ``prediction_arrays``, one row
    per test image, classes in 0..num_classes-1), or None when the run has none (it diverged at once)."""
    expected = prediction_arrays(num_classes)
    path = Path(run_dir) / PREDICTIONS_NAME
    if not os.path.lexists(path):
        return None
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ArchbenchError(f"{path}: one array, not an .npz archive of arrays; {RUN_FILES_FIX}")
        with loaded as z:
            arrays = {k: z[k] for k in z.files if k in expected or k in OPTIONAL_PREDICTIONS}
    except OSError as e:
        raise os_error("read", path, e, RUN_FILES_FIX) from e
    except _DAMAGED_ARCHIVE as e:
        raise ArchbenchError(f"{path}: not a readable .npz archive ({type(e).__name__}); {RUN_FILES_FIX}") from e
    index = arrays.get("index")
    n = len(index) if index is not None and index.ndim == 1 and len(index) > 0 else None
    for name, (kinds, row) in {**expected, **OPTIONAL_PREDICTIONS}.items():
        if name in arrays or name not in OPTIONAL_PREDICTIONS:
            problem = _array_problem(name, arrays.get(name), kinds, (n, *row), num_classes)
            if problem:
                raise ArchbenchError(f"{path}: array {name!r} {problem}; {RUN_FILES_FIX}")
    return arrays


def _array_problem(name: str, a: np.ndarray | None, kinds: str, shape: tuple, num_classes: int) -> str | None:
    """What is wrong with one array of predictions.npz (``shape[0]`` None: no valid index array)."""
    if a is None:
        return "is missing"
    if a.dtype.kind not in kinds:
        return f"holds {a.dtype}"
    if a.shape != shape or shape[0] is None:
        return f"has shape {a.shape}, expected ({', '.join(str(d or 'N') for d in shape)}) with N >= 1 test images"
    if name.endswith(("label", "pred")) and (a.min() < 0 or a.max() >= num_classes):
        return f"holds classes outside 0..{num_classes - 1}"
    return None


# ---------------------------------------------------------------- the compare folder


@dataclass(frozen=True)
class RunRef:
    model: str
    seed: int
    dir: str  # relative to the compare folder, POSIX separators


@dataclass(frozen=True)
class FailedRun:
    """A run of the grid that ended without a result (under ``--executor ray``): left out, and said why."""

    model: str
    seed: int
    dir: str
    reason: str


@dataclass(frozen=True)
class Manifest:
    """``comparison.json``: which runs this comparison is made of, in order, and how it was made."""

    models: list[str]  # the order of the command line: Δ is first − each other
    runs: list[RunRef]
    min_effect_pp: float  # smallest accuracy difference of interest
    environment: dict
    failed: list[FailedRun] = field(default_factory=list)  # runs of the grid left out

    def run_dirs(self, out_dir: Path) -> list[Path]:
        return [Path(out_dir) / r.dir for r in self.runs]


def relative_dir(run_dir: Path, out_dir: Path) -> str:
    return Path(os.path.relpath(Path(run_dir).resolve(), Path(out_dir).resolve())).as_posix()


def write_manifest(out_dir: Path, manifest: Manifest) -> None:
    body = {"format": MANIFEST_FORMAT, **asdict(manifest)}
    if not body["failed"]:
        del body["failed"]  # written only when some run failed, so a complete comparison reads as before
    atomic_write_text(Path(out_dir) / MANIFEST_NAME, json.dumps(body, indent=2) + "\n")


# What comparison.json's environment holds (``environment.describe``); other keys are ignored.
ENVIRONMENT = {
    "archbench": TEXT,
    "git commit": or_null(TEXT),
    "torch": TEXT,
    "python": TEXT,
    "device": TEXT,
    "data": or_null(TEXT),
    "data checksums": or_null(TEXT),
    "test images": or_null(integer(1)),
    "wall time of compare (s)": number(0),
}
FORMAT = Kind(f"{MANIFEST_FORMAT} (this archbench's format)", lambda v: type(v) is int and v == MANIFEST_FORMAT)
# A run's folder: compare writes it relative to the compare folder, inside it, with POSIX separators.
RUN_DIR = Kind("a relative path inside the folder", lambda v: isinstance(v, str) and _inside(v))


def _inside(d: str) -> bool:
    p = PurePosixPath(d)  # a backslash or a drive letter ("C:") would be read another way on Windows
    return not p.is_absolute() and bool(p.parts) and ".." not in p.parts and "\\" not in d and ":" not in d


def read_manifest(out_dir: Path) -> Manifest:
    """The checked comparison.json of a compare folder: each run listed once, inside the folder,
    of a listed model; each listed model with a run."""
    path = Path(out_dir) / MANIFEST_NAME
    if not os.path.lexists(path):
        raise ArchbenchError(f"{out_dir}: no {MANIFEST_NAME}; run archbench compare --out {out_dir} first")
    fix = f"run archbench compare --out {out_dir} again"
    f = Fields(read_json_file(path, "the comparison's manifest", fix), str(path), fix)
    f.get("format", FORMAT)
    models = f.each("models", TEXT)
    runs = [RunRef(r.get("model", TEXT), r.get("seed", integer(0)), r.get("dir", RUN_DIR)) for r in f.objects("runs")]
    min_effect = f.get("min_effect_pp", number(0))
    failed = [
        FailedRun(r.get("model", TEXT), r.get("seed", integer(0)), r.get("dir", RUN_DIR), r.get("reason", STRING))
        for r in (f.objects("failed") if "failed" in f.data else [])  # absent when no run failed
    ]
    env = f.sub("environment")
    environment = {k: env.get(k, kind) for k, kind in ENVIRONMENT.items()}
    f.require(len(set(models)) == len(models), "field 'models' names a model twice")
    f.require({r.model for r in runs} == set(models), "field 'runs' must hold runs of exactly the models listed")
    f.require(len({(r.model, r.seed) for r in runs}) == len(runs), "field 'runs' lists a model and seed twice")
    f.require(len({PurePosixPath(r.dir) for r in runs}) == len(runs), "field 'runs' lists a folder twice")
    return Manifest(models, runs, min_effect, environment, failed)


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
    head = (
        ["Model", "Test Loss", best_head, "#Params(M)", "Best Val(%)", "Final Acc(%)³"]
        + (["Final Exact(%)¹"] if exact else [])
        + ["n", "Diverged"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for model, rs in groups.items():
        best = [r.best for r in rs]
        final = [r.final for r in rs]
        best_val = _cell([r.best_val for r in rs])
        if len(rs) == 1 and rs[0].best is not None:
            best_val += f" (epoch {rs[0].best.epoch})"
        cells = [
            model,
            _cell([e and e.loss for e in best], ".4f"),
            _cell([e and e.acc for e in best]),
            f"{rs[0].params / 1e6:.2f}",
            best_val,
            _cell([e and e.acc for e in final]),
        ]
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
        notes.append(
            f"¹ On the {r0.images_exact:,} of {r0.images:,} test images that are pixel-exact; the "
            f"others in this copy of the test set are JPEG fills."
        )
    if on_test:
        notes.append(
            "² The best epoch's weights, picked on the test set itself (the study's choice): "
            "optimistic. Use --val-split N to select on held-out training images."
        )
    notes.append(
        "³ The weights that judge the model: "
        + ("the last epoch's." if on_test else "the best epoch's, selected on the held-out split.")
    )
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


def selection_note(cfg: Config) -> str:
    if cfg.val_split:
        return (
            f"Best epochs are selected on {cfg.val_split:,} held-out training images; the test set is "
            f"used only for the final evaluation."
        )
    return (
        "Best epochs are selected on the test set, as in the study, so Best Val and the test "
        "accuracy of the best epoch are optimistic; verdicts use the last epoch's weights. "
        "Use --val-split N for an unbiased selection."
    )


def protocol_note(cfg: Config) -> str:
    return (
        f"Protocol: {cfg.epochs} epochs, batch {cfg.batch_size}, SGD momentum {cfg.momentum}, "
        f"weight decay {cfg.weight_decay}, MultiStepLR milestones {list(cfg.milestones)} gamma "
        f"{cfg.gamma}, {cfg.pipeline} pipeline, {cfg.precision}. {selection_note(cfg)}"
    )


def write_outputs(out_dir: Path, results: list[Result], run_dirs: list[Path], note: str, deltas: list[str]) -> None:
    """comparison.csv (one row per run, its folder relative to ``out_dir``) and comparison.md."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(
        [
            "model",
            "seed",
            "run_dir",
            "params",
            "best_epoch",
            "best_val",
            "best_test_loss",
            "best_test_acc",
            "last_epoch",
            "last_test_loss",
            "last_test_acc",
            "final_test_acc",
            "diverged_epoch",
        ]
    )
    for r, d in zip(results, run_dirs):
        b, last, f = r.best, r.last, r.final
        row = [
            r.model,
            r.seed,
            relative_dir(d, out_dir),
            r.params,
            b and b.epoch,
            r.best_val,
            b and b.loss,
            b and b.acc,
            last and last.epoch,
            last and last.loss,
            last and last.acc,
            f and f.acc,
            r.diverged and r.diverged["epoch"],
        ]
        w.writerow(["" if v is None else v for v in row])
    atomic_write_text(Path(out_dir) / "comparison.csv", buf.getvalue())
    md = (
        "# archbench comparison\n\n"
        + table_markdown(results)
        + "\n"
        + "\n".join(f"{d}  " for d in deltas)
        + f"\n\n{note}\n"
    )
    atomic_write_text(Path(out_dir) / "comparison.md", md)
