"""A comparison's runs loaded from its folder, checked, and compared pairwise.

Only the runs listed in ``comparison.json`` take part, and they must share one protocol
(models may differ in their learning rate; seeds of one model in nothing but the seed).
Seeds pair runs across models (the same seed gives the same data order and augmentation),
so differences are taken per seed: a paired t interval over seeds for run-level metrics,
and for accuracy a two-level bootstrap (seeds, then test images) plus McNemar's exact test
on the per-image predictions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from archbench.analysis import stats
from archbench.analysis.compare import Manifest, Result, by_model, read_final, read_manifest, read_predictions
from archbench.analysis.metrics import summarize
from archbench.config import PROTOCOL_FIELDS, Config, protocol, read_json
from archbench.errors import ArchbenchError
from archbench.train import history
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

    def final_correct(self) -> np.ndarray | None:
        """Per test image: did the judging weights (see ``Result.final``) classify it correctly?"""
        if self.predictions is None or self.result.final is None:
            return None
        which = "best" if self.result.selected_on == "validation" else "last"
        return self.predictions[f"{which}_pred"] == self.predictions["label"]


def load_run(run_dir: Path) -> RunData:
    if not run_dir.is_dir():
        raise ArchbenchError(f"{run_dir} is listed in the comparison but missing; restore it or run "
                             f"archbench compare again")
    cfg = read_json(run_dir / CONFIG_NAME)
    records = history.read(run_dir)
    result = read_final(run_dir)
    metrics = summarize(records, planned_epochs=cfg.epochs) if records else {}
    return RunData(run_dir, cfg, result, records, metrics, read_predictions(run_dir))


def check_protocols(runs: list[RunData]) -> None:
    """Refuse runs that do not share a protocol, naming the first difference."""
    first = runs[0]
    for r in runs[1:]:
        same_model = r.cfg.model == first.cfg.model
        skip = {"seed"} if same_model else {"seed", *PER_MODEL_FIELDS}
        a, b = protocol(first.cfg), protocol(r.cfg)
        diffs = [f"{k}: {a[k]!r} in {first.dir} vs {b[k]!r} in {r.dir}" for k in PROTOCOL_FIELDS
                 if k not in skip and a[k] != b[k]]
        if diffs:
            raise ArchbenchError(f"the compared runs differ in protocol ({'; '.join(diffs)}); compare only runs "
                                 f"trained the same way")
    indices = [r.predictions["index"] for r in runs if r.predictions is not None]
    if any(not np.array_equal(indices[0], i) for i in indices[1:]):
        raise ArchbenchError("the compared runs were evaluated on different test images; run archbench "
                             "compare again to evaluate them on the same ones")


def load(out_dir: Path) -> tuple[Manifest, dict[str, list[RunData]]]:
    """The manifest and its runs per model, in the comparison's model order."""
    manifest = read_manifest(out_dir)
    runs = [load_run(d) for d in manifest.run_dirs(out_dir)]
    if not runs:
        raise ArchbenchError(f"{out_dir}: the comparison lists no runs; run archbench compare again")
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
        seeds, per_seed, stats.paired_t(list(100.0 * ca.mean(axis=1)), list(100.0 * cb.mean(axis=1))),
        stats.two_level_bootstrap(ca, cb, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED), tests,
        stats.mcnemar_combined(tests), stats.cohens_dz(per_seed), stats.min_detectable_effect(sd, len(seeds)),
        [f"{r.cfg.model} seed {r.cfg.seed}" for r in a + b if r.result.diverged])


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
