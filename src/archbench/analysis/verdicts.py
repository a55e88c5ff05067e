"""Verdicts on the study's two hypotheses, by stated rules from the runs' metrics.

H1 (the identity path makes training more stable and converge faster), for a residual
model A against a model B (its same-depth plain twin, or VGG):
  metrics, lower is better: epochs to reach 80% val accuracy (a run that never does
  counts as its length + 1), and the mean absolute epoch-to-epoch change of val accuracy
  in the first LR phase. With D = A − B and its 95% Welch interval per metric:
  supported if every interval lies below 0; not supported if any lies above 0;
  inconclusive otherwise (also when a model has fewer than two seeds).
H2 (A reaches a higher test accuracy with fewer parameters than B):
  not supported if A has at least as many parameters, or if the interval of the test
  accuracy difference lies below 0; supported if A has fewer parameters and the interval
  lies above 0; inconclusive otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from archbench.analysis.stats import Difference, welch

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"
H1_METRICS = (("epochs_to_80", "epochs to 80% val acc"),
              ("phase1_val_acc_mean_abs_change", "mean |Δ val acc| per epoch, first LR phase (pp)"))


@dataclass(frozen=True)
class RunFacts:
    """What the verdicts need of one run (one model, one seed)."""

    model: str
    seed: int
    params: int
    epochs: int
    test_acc: float
    metrics: dict


@dataclass
class Verdict:
    hypothesis: str
    a: str
    b: str
    verdict: str
    evidence: list[str] = field(default_factory=list)


def _below(d: Difference) -> bool:
    return d.ci_high is not None and d.ci_high < 0


def _above(d: Difference) -> bool:
    return d.ci_low is not None and d.ci_low > 0


def _metric(r: RunFacts, key: str) -> float:
    v = r.metrics.get(key)
    return float(r.epochs + 1) if v is None else float(v)


def h1(a: list[RunFacts], b: list[RunFacts]) -> Verdict:
    diffs = []
    v = Verdict("H1: more stable, faster convergence", a[0].model, b[0].model, INCONCLUSIVE)
    for key, label in H1_METRICS:
        d = welch([_metric(r, key) for r in a], [_metric(r, key) for r in b])
        diffs.append(d)
        v.evidence.append(f"{label}: {a[0].model} − {b[0].model} = {d.text(unit='')}")
    if all(_below(d) for d in diffs):
        v.verdict = SUPPORTED
    elif any(_above(d) for d in diffs):
        v.verdict = NOT_SUPPORTED
    return v


def h2(a: list[RunFacts], b: list[RunFacts]) -> Verdict:
    v = Verdict("H2: higher test accuracy with fewer parameters", a[0].model, b[0].model, INCONCLUSIVE)
    pa, pb = a[0].params, b[0].params
    d = welch([r.test_acc for r in a], [r.test_acc for r in b])
    v.evidence.append(f"parameters: {pa / 1e6:.2f}M vs {pb / 1e6:.2f}M")
    v.evidence.append(f"test accuracy: {a[0].model} − {b[0].model} = {d.text()}")
    if pa >= pb or _below(d):
        v.verdict = NOT_SUPPORTED
    elif _above(d):
        v.verdict = SUPPORTED
    return v


def verdicts(runs: dict[str, list[RunFacts]]) -> list[Verdict]:
    """Every H1/H2 verdict the compared models allow: each resnet against its same-depth plain
    twin and against every non-ResNet-family model (VGG); plain nets of another depth are skipped."""
    out = []
    for a in (m for m in runs if m.startswith("resnet")):
        depth = a[len("resnet"):]
        for b in runs:
            if b.startswith("resnet") or (b.startswith("plain") and b != f"plain{depth}"):
                continue
            out.append(h1(runs[a], runs[b]))
            out.append(h2(runs[a], runs[b]))
    return out
