"""A comparison's runs loaded from its folder, checked, and compared pairwise.

Each file is checked by its reader; here the files of a run are checked against each
other and against ``comparison.json``, so that a file left from another run, or one cut
short, cannot pass for part of this comparison.

Only the runs listed in ``comparison.json`` take part, and they must share one protocol
(models may differ in their learning rate; seeds of one model in nothing but the seed).
Seeds pair runs across models (the same seed gives the same data order and augmentation),
so differences are taken per seed: a paired t interval over seeds for run-level metrics,
and for accuracy a two-level bootstrap (seeds, then test images) plus McNemar's exact test
on the per-image predictions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from archbench.analysis import landscape, stats
from archbench.analysis.compare import (
    FINAL_NAME,
    MANIFEST_NAME,
    PREDICTIONS_NAME,
    RUN_FILES_FIX,
    Manifest,
    Result,
    by_model,
    read_final,
    read_manifest,
    read_predictions,
)
from archbench.analysis.metrics import summarize
from archbench.config import PROTOCOL_FIELDS, Config, protocol, protocol_mismatch, read_json
from archbench.data.datasets import get as get_dataset
from archbench.errors import ArchbenchError
from archbench.train import divergence, gradflow, history
from archbench.train.model_record import read_model_record
from archbench.train.runner import CONFIG_NAME

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0  # the report is a pure function of the folder: same files, same intervals
# Fields that may differ between the models of one comparison (each model's own default lr).
PER_MODEL_FIELDS = ("model", "lr")


@dataclass
class RunData:
    """Everything the analysis reads of one run folder."""

    dir: Path
    cfg: Config
    result: Result
    records: list[dict]
    metrics: dict
    predictions: dict[str, np.ndarray] | None
    flow: gradflow.Flow | None = None
    landscape: dict | None = None  # landscape/landscape.json, when the run's landscape was measured
    landscape_arrays: dict[str, np.ndarray] | None = None  # landscape/landscape.npz
    plain_twin_of: str | None = None  # the residual model this one is the shortcut-free twin of
    builtin_model: bool = True  # one of archbench's own models (runs made before model.json all were)

    def final_correct(self) -> np.ndarray | None:
        """Per test image: did the judging weights (see ``Result.final``) classify it correctly?"""
        if self.predictions is None or self.result.final is None:
            return None
        which = "best" if self.result.selected_on == "validation" else "last"
        return self.predictions[f"{which}_pred"] == self.predictions["label"]


def load_run(run_dir: Path) -> RunData:
    """A run folder's files, each checked by its reader, then against each other."""
    if not run_dir.is_dir():
        raise ArchbenchError(
            f"{run_dir} is listed in the comparison but missing; restore it or run archbench compare again"
        )
    cfg = read_json(run_dir / CONFIG_NAME)
    records = history.read(run_dir)
    result = read_final(run_dir)
    predictions = read_predictions(run_dir, get_dataset(cfg.dataset).num_classes)
    _check_agreement(run_dir, cfg, records, result, predictions, divergence.read(run_dir))
    metrics = summarize(records, planned_epochs=cfg.epochs) if records else {}
    measured = landscape.read_results(run_dir)
    info, arrays = measured if measured is not None else (None, None)
    if info is not None:
        _check_landscape(run_dir, cfg, result, info)
        metrics.update(landscape_metrics(info, result))
    flow = gradflow.read(run_dir)
    twin, builtin = _model_facts(run_dir, cfg)
    return RunData(run_dir, cfg, result, records, metrics, predictions, flow, info, arrays, twin, builtin)


def _model_facts(run_dir: Path, cfg: Config) -> tuple[str | None, bool]:
    """(plain twin of, built-in) as model.json says; for runs made before model.json, which were
    all of built-ins, the registry's word."""
    from archbench.models import MODELS

    record = read_model_record(run_dir)
    if record is not None:
        return record["plain_twin_of"], record["source"]["kind"] == "builtin"
    return (MODELS[cfg.model].plain_twin_of if cfg.model in MODELS else None), True


def landscape_metrics(info: dict, result: Result) -> dict[str, float]:
    """Curvature on a log scale (a ratio between models is what carries over between
    settings); none for a diverged run, whose weights never finished the protocol, or for
    a non-positive estimate, which has no log."""
    h = info.get("hessian")
    if not h or result.final is None:
        return {}
    out = {}
    for key, value in (("hessian_ln_lambda_max", h["lambda_max"]), ("hessian_ln_trace", h["trace"])):
        if isinstance(value, (int, float)) and value > 0:
            out[key] = math.log(value)
    return out


def _check_landscape(run_dir: Path, cfg: Config, result: Result, info: dict) -> None:
    """A landscape of another run, or of weights the run no longer ends with, is refused."""
    where = landscape.folder_of(run_dir) / landscape.JSON
    fix = f"run archbench landscape {run_dir} again"
    if (info.get("model"), info.get("seed")) != (cfg.model, cfg.seed):
        raise ArchbenchError(
            f"{where} is of {info.get('model')} seed {info.get('seed')}, but {run_dir / CONFIG_NAME} of "
            f"{cfg.model} seed {cfg.seed}; {fix}"
        )
    judged = {"best": result.best, "last": result.last}.get(str(info.get("weights")))
    if judged is not None and judged.epoch != info.get("epoch"):
        raise ArchbenchError(
            f"{where} measured the {info.get('weights')} weights of epoch {info.get('epoch')}, but the run's "
            f"{info.get('weights')} weights are now of epoch {judged.epoch}; {fix}"
        )


def _check_agreement(
    run_dir: Path,
    cfg: Config,
    records: list[dict],
    result: Result,
    predictions: dict[str, np.ndarray] | None,
    diverged: dict | None,
) -> None:
    """Refuse a run whose files describe different runs: one left from another run, or cut short,
    would otherwise make a report that contradicts itself. Each rule names both files."""
    config, final, npz = run_dir / CONFIG_NAME, run_dir / FINAL_NAME, run_dir / PREDICTIONS_NAME

    def require(ok: bool, problem: str) -> None:
        if not ok:
            raise ArchbenchError(f"{problem}; {RUN_FILES_FIX}")

    require(
        (result.model, result.seed, result.planned_epochs) == (cfg.model, cfg.seed, cfg.epochs),
        f"{final} is of {result.model} seed {result.seed}, {result.planned_epochs} epochs, but {config} of "
        f"{cfg.model} seed {cfg.seed}, {cfg.epochs} epochs",
    )
    require(
        result.selected_on == ("validation" if cfg.val_split else "test"),
        f"{final} selected on {result.selected_on}, but {config} has val_split={cfg.val_split}",
    )
    record = run_dir / divergence.FILE_NAME
    noted = None if diverged is None else {"epoch": diverged["epoch"], "step": diverged["step"]}
    require(
        result.diverged == noted,
        f"{final} has diverged={result.diverged}, but {record} {'is absent' if noted is None else f'records {noted}'}",
    )
    differ = [] if diverged is None else protocol_mismatch(diverged["config"], cfg)
    require(not differ, f"{record} is of another protocol than {config} ({differ[0] if differ else ''})")
    kept = 0 if result.last is None else result.last.epoch
    require(
        len(records) == kept,
        f"the history ({run_dir / history.JSONL_NAME}, {history.CSV_NAME}) holds "
        f"{len(records)} epochs, but {final} describes the weights of epoch {kept}",
    )
    require(
        (predictions is None) == (result.last is None),
        f"{npz} is {'absent' if predictions is None else 'there'}, but {final} describes "
        f"{'weights' if result.last else 'no weights'}",
    )
    if predictions is None or result.last is None:
        return
    n = len(predictions["index"])
    require(n == result.images, f"{npz} holds {n} test images, {final} {result.images}")
    for which, ev in (("best", result.best), ("last", result.last)):
        acc = 100.0 * int(np.sum(predictions[f"{which}_pred"] == predictions["label"])) / n
        require(
            math.isclose(acc, ev.acc, rel_tol=1e-9, abs_tol=1e-9),
            f"{npz} gives the {which} weights {acc:.2f}% accuracy, {final} {ev.acc:.2f}%",
        )


def check_protocols(runs: list[RunData]) -> None:
    """Refuse runs that do not share a protocol, naming the first difference."""
    first = runs[0]
    for r in runs[1:]:
        same_model = r.cfg.model == first.cfg.model
        skip = {"seed"} if same_model else {"seed", *PER_MODEL_FIELDS}
        a, b = protocol(first.cfg), protocol(r.cfg)
        diffs = [
            f"{k}: {a[k]!r} in {first.dir / CONFIG_NAME} vs {b[k]!r} in {r.dir / CONFIG_NAME}"
            for k in PROTOCOL_FIELDS
            if k not in skip and a[k] != b[k]
        ]
        if diffs:
            raise ArchbenchError(
                f"the compared runs differ in protocol ({'; '.join(diffs)}); compare only runs trained the same way"
            )
    evaluated = [r for r in runs if r.predictions is not None]
    differ = next(
        (r for r in evaluated[1:] if not np.array_equal(evaluated[0].predictions["index"], r.predictions["index"])),
        None,
    )
    if differ is not None:
        raise ArchbenchError(
            f"the compared runs were evaluated on different test images "
            f"({evaluated[0].dir / PREDICTIONS_NAME} vs {differ.dir / PREDICTIONS_NAME}); run "
            f"archbench compare again to evaluate them on the same ones"
        )


def load(out_dir: Path) -> tuple[Manifest, dict[str, list[RunData]]]:
    """The manifest and its runs per model, in the comparison's model order."""
    manifest = read_manifest(out_dir)  # lists at least one run
    runs = [load_run(d) for d in manifest.run_dirs(out_dir)]
    for r, ref in zip(runs, manifest.runs):
        if (r.cfg.model, r.cfg.seed) != (ref.model, ref.seed):
            raise ArchbenchError(
                f"{Path(out_dir) / MANIFEST_NAME} lists {ref.model} seed {ref.seed} in {ref.dir}, but "
                f"{r.dir / CONFIG_NAME} is of {r.cfg.model} seed {r.cfg.seed}; run archbench "
                f"compare --out {out_dir} again"
            )
    check_protocols(runs)
    groups = by_model(runs, key=lambda r: r.cfg.model)
    return manifest, {m: groups[m] for m in manifest.models if m in groups}


def _paired_by_seed(a: list[RunData], b: list[RunData], value) -> tuple[list[int], list, list]:
    """Seeds both models have a value for, and the values, in seed order."""
    va = {r.cfg.seed: value(r) for r in a}
    vb = {r.cfg.seed: value(r) for r in b}
    seeds = sorted(s for s in va.keys() & vb.keys() if va[s] is not None and vb[s] is not None)
    return seeds, [va[s] for s in seeds], [vb[s] for s in seeds]


def metric_difference(a: list[RunData], b: list[RunData], key: str) -> stats.Estimate:
    """A − B of a run-level metric, paired by seed (paired t over seeds)."""
    seeds, va, vb = _paired_by_seed(a, b, lambda r: r.metrics.get(key))
    if not seeds:
        return stats.Estimate(float("nan"), 0, None, None, None, "paired t", "no seed has this metric for both")
    return stats.paired_t(va, vb)


@dataclass(frozen=True)
class AccuracyEvidence:
    """Final test accuracy of A − B, paired by seed and by test image."""

    seeds: list[int]
    per_seed: list[float]  # A − B at each seed (pp)
    paired_t: stats.Estimate  # over seeds: architecture-level, test set held fixed
    bootstrap: stats.Estimate  # seeds and test images resampled: includes test-set sampling noise
    mcnemar: list[stats.McNemar]  # per seed: do these two trained networks differ on this test set?
    mcnemar_pooled: stats.McNemar
    effect_dz: float | None  # mean/sd of the per-seed differences
    mde_pp: float | None  # smallest difference this many seeds detect with 80% power at this spread
    excluded: list[str]  # runs left out because they diverged ("model seed k")

    @property
    def diff(self) -> float:
        return float(np.mean(self.per_seed))


def accuracy_evidence(a: list[RunData], b: list[RunData]) -> AccuracyEvidence | None:
    """None when no seed has final predictions for both models. Diverged runs have no final
    weights (``Result.final``), so their seeds are left out and listed in ``excluded``."""
    seeds, ca, cb = _paired_by_seed(a, b, RunData.final_correct)
    if not seeds:
        return None
    ca, cb = np.stack(ca), np.stack(cb)
    per_seed = list(100.0 * (ca.mean(axis=1) - cb.mean(axis=1)))
    tests = [stats.mcnemar(x, y) for x, y in zip(ca, cb)]
    sd = float(np.std(per_seed, ddof=1)) if len(seeds) > 1 else float("nan")
    return AccuracyEvidence(
        seeds,
        per_seed,
        stats.paired_t(list(100.0 * ca.mean(axis=1)), list(100.0 * cb.mean(axis=1))),
        stats.two_level_bootstrap(ca, cb, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED),
        tests,
        stats.mcnemar_combined(tests),
        stats.cohens_dz(per_seed),
        stats.min_detectable_effect(sd, len(seeds)),
        [f"{r.cfg.model} seed {r.cfg.seed}" for r in a + b if r.result.diverged],
    )


def accuracy_line(a: str, b: str, ev: AccuracyEvidence | None) -> str:
    """One line for the terminal and comparison.md."""
    if ev is None:
        return f"Δ final accuracy ({a} − {b}): no seed has final weights for both"
    n = len(ev.seeds)
    mc = ev.mcnemar_pooled
    mc_text = "no discordant images" if mc.p_value is None else f"McNemar p = {mc.p_value:.3g}"
    text = f"Δ final accuracy ({a} − {b}) = {ev.bootstrap.text()}; {mc_text}"
    if n == 1:
        return text + " (one seed per model: seed-to-seed spread unknown)"
    text += f"; per seed {', '.join(f'{d:+.2f}' for d in ev.per_seed)} pp"
    return text + (f" (left out, diverged: {', '.join(ev.excluded)})" if ev.excluded else "")
