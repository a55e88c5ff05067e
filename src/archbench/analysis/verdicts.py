"""Verdicts on the study's hypotheses, by stated rules, for each resnet against its
same-depth plain twin and against every model that is neither a resnet nor a plain net
of another depth.

Labels: supported, contradicted, not shown, not applicable.

Every comparison below is one test in a family; the family's p-values are Holm-corrected
together. A test 'favours' A when its Holm-adjusted p < 0.05 and its estimate is at least
the smallest effect of interest in A's favour; it 'goes against' A the same way in B's
favour; otherwise it shows nothing, however small its p.

H1 (the identity path makes training more stable and converge faster), A vs B, paired by
seed. Convergence: epochs to 80% val accuracy, epochs to a training loss of 0.5, mean
training loss over the first LR phase. Stability: val-accuracy fluctuation around its
smoothed trend in the first LR phase, and divergence (a diverged run is an outcome).
Contradicted if any test goes against A or A diverged in more seeds than B; supported if a
convergence test favours A and stability favours A (its test, or B diverged in more seeds)
with nothing against; not shown otherwise.

H2 (higher final test accuracy with fewer parameters), A vs B: accuracy is the final
weights' (the last epoch's, or the best-on-validation epoch's with --val-split; a diverged
run has none and is left out), the interval a two-level bootstrap over seeds and test
images, the p-value the larger of the bootstrap's and the paired t's over seeds. Against the same-depth plain
twin the parameter part is not applicable (the shortcuts' projections are all A adds), so
H2 is 'not applicable' and the accuracy difference is judged on its own. Otherwise:
contradicted if A has at least as many parameters or the accuracy test goes against A;
supported if the accuracy test favours A; not shown otherwise. One seed per model shows
nothing: the seed-to-seed spread is unknown.

H3 (the identity path gives a smoother, flatter solution), a resnet vs its same-depth plain
twin, judged when both have Hessian measurements (archbench landscape) taken with the same
settings, paired by seed: the log of the top Hessian eigenvalue and the log of the Hessian
trace at the judged weights (logs: curvature differs between models by factors, and a
factor carries over between image subsets where a difference does not; the smallest
effect of interest is a factor of 1.2). Contradicted if either test goes against A;
supported if either favours A; not shown otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from archbench.analysis import stats
from archbench.analysis.evidence import RunData, accuracy_evidence, metric_difference
from archbench.config import Config

SUPPORTED, CONTRADICTED, NOT_SHOWN, NOT_APPLICABLE = "supported", "contradicted", "not shown", "not applicable"
ALPHA = 0.05
H1_TEXT = "H1: more stable, faster convergence"
H2_TEXT = "H2: higher test accuracy with fewer parameters"
H3_TEXT = "H3: the identity path gives a smoother, flatter solution"
ACC_TEXT = "Final test accuracy"
DEFAULT_MIN_EFFECT_PP = Config.min_effect  # smallest accuracy difference of interest, percentage points

# H1 metrics (lower is better), each with its smallest effect of interest in its own unit.
CONVERGENCE = (
    ("epochs_to_80", "epochs to 80% val acc", 1.0, "epochs"),
    ("epochs_to_train_loss", "epochs to train loss ≤ 0.5", 1.0, "epochs"),
    ("phase1_train_loss_mean", "mean train loss, first LR phase", 0.02, "nats"),
)
STABILITY = (("phase1_val_acc_fluctuation", "val acc fluctuation around trend, first LR phase", 0.1, "pp"),)
# H3 metrics (lower is better): natural logs, so 0.18 is a factor of 1.2.
FLATNESS_MIN_FACTOR = 1.2
FLATNESS = (
    ("hessian_ln_lambda_max", "ln λmax (top Hessian eigenvalue)", math.log(FLATNESS_MIN_FACTOR), "ln units"),
    ("hessian_ln_trace", "ln Hessian trace", math.log(FLATNESS_MIN_FACTOR), "ln units"),
)


@dataclass
class Test:
    """One comparison in the family: A − B of one quantity, and what it shows."""

    label: str
    estimate: stats.Estimate
    min_effect: float
    unit: str
    lower_is_better: bool  # for A
    p_holm: float | None = None

    def favours(self, sign: int) -> bool:
        """sign +1: the test favours A; −1: it goes against A."""
        e = self.estimate
        if self.p_holm is None or self.p_holm >= ALPHA or not math.isfinite(e.diff):
            return False
        toward_a = -e.diff if self.lower_is_better else e.diff
        return sign * toward_a >= self.min_effect

    def text(self) -> str:
        e = self.estimate
        if not math.isfinite(e.diff):
            return f"{self.label}: not available ({e.note})"
        p = "" if self.p_holm is None else f", Holm p = {self.p_holm:.3g}"
        return (
            f"{self.label}: {e.text(unit=self.unit)}{p}; smallest effect of interest {self.min_effect:.3g} {self.unit}"
        )


@dataclass
class Verdict:
    hypothesis: str
    a: str
    b: str
    label: str = NOT_SHOWN
    tests: list[Test] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    decide: object = None  # sets ``label`` once the family's p-values are adjusted

    def sentence(self) -> str:
        return "; ".join([t.text() for t in self.tests] + self.notes)


def _diverged(runs: list[RunData]) -> int:
    return sum(1 for r in runs if r.result.diverged)


def h1(a: list[RunData], b: list[RunData]) -> Verdict:
    v = Verdict(H1_TEXT, a[0].cfg.model, b[0].cfg.model)
    conv = [Test(label, metric_difference(a, b, key), sesoi, unit, True) for key, label, sesoi, unit in CONVERGENCE]
    stab = [Test(label, metric_difference(a, b, key), sesoi, unit, True) for key, label, sesoi, unit in STABILITY]
    v.tests = conv + stab
    da, db = _diverged(a), _diverged(b)
    if da or db:
        v.notes.append(f"diverged: {v.a} {da} of {len(a)} seeds, {v.b} {db} of {len(b)}")

    def decide() -> None:
        if da > db or any(t.favours(-1) for t in v.tests):
            v.label = CONTRADICTED
        elif any(t.favours(+1) for t in conv) and (db > da or any(t.favours(+1) for t in stab)):
            v.label = SUPPORTED
        else:
            v.label = NOT_SHOWN

    v.decide = decide
    return v


def h3(a: list[RunData], b: list[RunData]) -> Verdict:
    v = Verdict(H3_TEXT, a[0].cfg.model, b[0].cfg.model)
    v.tests = [Test(label, metric_difference(a, b, key), sesoi, unit, True) for key, label, sesoi, unit in FLATNESS]
    for t, what in zip(v.tests, ("λmax", "trace")):
        if math.isfinite(t.estimate.diff):  # the log difference read back as a factor
            factor = math.exp(t.estimate.diff)
            v.notes.append(f"{v.a}'s {what} is {factor:.3g}× {v.b}'s (geometric mean of the per-seed ratios)")
    v.notes.append(f"{math.log(FLATNESS_MIN_FACTOR):.3g} ln units is a factor of {FLATNESS_MIN_FACTOR:g}")

    def decide() -> None:
        if any(t.favours(-1) for t in v.tests):
            v.label = CONTRADICTED
        elif any(t.favours(+1) for t in v.tests):
            v.label = SUPPORTED
        else:
            v.label = NOT_SHOWN

    v.decide = decide
    return v


def has_curvature(runs: list[RunData]) -> bool:
    return any("hessian_ln_lambda_max" in r.metrics or "hessian_ln_trace" in r.metrics for r in runs)


def _accuracy_test(a: list[RunData], b: list[RunData], min_effect: float) -> tuple[Test, list[str]]:
    ev = accuracy_evidence(a, b)
    if ev is None:
        e = stats.Estimate(
            float("nan"), 0, None, None, None, "two-level bootstrap", "no seed has final weights for both models"
        )
        return Test("final test accuracy", e, min_effect, "pp", False), []
    boot, t = ev.bootstrap, ev.paired_t
    notes = []
    if len(ev.seeds) < 2:
        # Test-image noise alone would make one pair of networks look like an architecture effect.
        e = stats.Estimate(
            boot.diff,
            1,
            boot.ci_low,
            boot.ci_high,
            None,
            boot.method,
            "one seed per model: the seed-to-seed spread is unknown",
        )
    else:
        # A percentile bootstrap over 2-3 seeds is too liberal, the paired t ignores test-set
        # noise: an effect must pass both (the larger p), which keeps the level of each.
        p = None if boot.p_value is None or t.p_value is None else max(boot.p_value, t.p_value)
        e = stats.Estimate(
            boot.diff,
            boot.n,
            boot.ci_low,
            boot.ci_high,
            p,
            f"{boot.method}; p: the larger of its and the paired t's",
            boot.note,
            boot.p_floor if p == boot.p_value else None,
        )
        notes.append(
            "paired t over seeds: "
            + (f"95% CI [{t.ci_low:+.2f}, {t.ci_high:+.2f}]" if t.has_interval() else f"no interval ({t.note})")
        )
        if ev.mde_pp is not None:
            notes.append(
                f"with {len(ev.seeds)} seeds a paired t at α = 0.05 (before the Holm correction) "
                f"detects differences ≥ {ev.mde_pp:.2f} pp with 80% power at this spread"
            )
    if ev.excluded:
        notes.append("left out, diverged: " + ", ".join(ev.excluded))
    if ev.mcnemar_pooled.p_value is not None:
        notes.append(f"McNemar (pooled over seeds) p = {ev.mcnemar_pooled.p_value:.3g}")
    return Test("final test accuracy", e, min_effect, "pp", False), notes


def h2(a: list[RunData], b: list[RunData], twin: bool, min_effect: float) -> list[Verdict]:
    """H2, and for a plain twin the accuracy comparison on its own."""
    name_a, name_b = a[0].cfg.model, b[0].cfg.model
    pa, pb = a[0].result.params, b[0].result.params
    test, notes = _accuracy_test(a, b, min_effect)
    params = f"parameters {pa / 1e6:.2f}M vs {pb / 1e6:.2f}M"
    if twin:
        h = Verdict(
            H2_TEXT,
            name_a,
            name_b,
            NOT_APPLICABLE,
            notes=[
                f"{name_b} is {name_a} without shortcuts: the parameter claim does not apply ({params}; the "
                f"projection shortcuts add {pa - pb:,}); the accuracy difference is judged on its own below"
            ],
        )
        acc = Verdict(ACC_TEXT, name_a, name_b, tests=[test], notes=notes)
        acc.decide = lambda: setattr(acc, "label", _accuracy_label(test))
        return [h, acc]
    v = Verdict(H2_TEXT, name_a, name_b, tests=[test], notes=[params] + notes)

    def decide() -> None:
        v.label = CONTRADICTED if pa >= pb or test.favours(-1) else _accuracy_label(test)

    v.decide = decide
    return [v]


def _accuracy_label(test: Test) -> str:
    if test.favours(+1):
        return SUPPORTED
    return CONTRADICTED if test.favours(-1) else NOT_SHOWN


def pairs(
    models: list[str], twin_of: dict[str, str] | None = None, user: set[str] | frozenset[str] = frozenset()
) -> list[tuple[str, str, bool]]:
    """(residual, other, other is its plain twin) for every pair that gets verdicts.

    Residual models are the built-in resnets and every compared model another one is declared the
    plain twin of (``twin_of``: plain model -> residual model, from the models' metadata; a twin of a
    model not compared is ignored); among built-ins, plainN is the twin of resnetN by name. A plain
    model is compared only with its own residual model. Names are read this way only for built-ins:
    a model from outside the package (``user``) is residual or plain only as its metadata declare.
    """
    builtin = [m for m in models if m not in user]
    declared = {p: r for p, r in (twin_of or {}).items() if r in models}
    twin_of = {**{m: f"resnet{m[len('plain') :]}" for m in builtin if m.startswith("plain")}, **declared}
    residual = [m for m in models if (m in builtin and m.startswith("resnet")) or m in twin_of.values()]
    out = []
    for a in residual:
        for b in models:
            if b in residual or (b in twin_of and twin_of[b] != a):
                continue
            out.append((a, b, twin_of.get(b) == a))
    return out


def twins(runs: dict[str, list[RunData]]) -> dict[str, str]:
    """plain model -> its residual model, as the compared runs' model records declare."""
    return {m: rs[0].plain_twin_of for m, rs in runs.items() if rs and rs[0].plain_twin_of}


def user_models(runs: dict[str, list[RunData]]) -> set[str]:
    """The compared models that come from outside the package."""
    return {m for m, rs in runs.items() if rs and not rs[0].builtin_model}


def verdicts(
    runs: dict[str, list[RunData]], min_effect_pp: float = DEFAULT_MIN_EFFECT_PP, with_curvature: bool = True
) -> list[Verdict]:
    """Every verdict the compared models allow, decided with one Holm correction over all their tests.
    ``with_curvature`` False leaves H3 out (landscapes measured with different settings)."""
    out: list[Verdict] = []
    for a, b, twin in pairs(list(runs), twins(runs), user_models(runs)):
        out.append(h1(runs[a], runs[b]))
        out += h2(runs[a], runs[b], twin, min_effect_pp)
        if twin and with_curvature and has_curvature(runs[a]) and has_curvature(runs[b]):
            out.append(h3(runs[a], runs[b]))
    return decide_all(out)


def decide_all(family: list[Verdict]) -> list[Verdict]:
    """Holm-adjust the p-values of every test in ``family`` together, then label each verdict."""
    tests = [t for v in family for t in v.tests]
    for t, p in zip(tests, stats.holm([t.estimate.p_value for t in tests])):
        t.p_holm = p
    for v in family:
        if v.decide is not None:
            v.decide()
    return family
