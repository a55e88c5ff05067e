"""Verdict rules on constructed runs: clear effects, ties, the smallest effect of interest,
the plain twin, one seed, divergence, and which pairs get verdicts."""

from pathlib import Path

import numpy as np

from archbench.analysis.compare import Evaluation, Result
from archbench.analysis.evidence import RunData, accuracy_evidence
from archbench.analysis.verdicts import (
    CONTRADICTED,
    NOT_APPLICABLE,
    NOT_SHOWN,
    SUPPORTED,
    decide_all,
    h1,
    h2,
    pairs,
    verdicts,
)
from archbench.config import Config

PARAMS = {"resnet18": 11_173_962, "plain18": 11_000_138, "vgg19_bn": 38_958_922, "resnet34": 21_282_122}
IMAGES = 10_000


def correct_mask(n_right: int, seed: int) -> np.ndarray:
    """A per-image correctness vector with ``n_right`` hits, spread by ``seed``."""
    c = np.zeros(IMAGES, bool)
    c[np.random.default_rng(seed).permutation(IMAGES)[:n_right]] = True
    return c


def run(model: str, seed: int, metrics: dict, correct: np.ndarray, diverged: dict | None = None) -> RunData:
    pred = np.where(correct, 0, 1)
    final = Evaluation(30, 0.3, 100.0 * correct.mean(), None)
    result = Result(model, seed, PARAMS[model], 5e8, 30, "test", 95.0, final, final, IMAGES, None, diverged)
    predictions = {"index": np.arange(IMAGES), "label": np.zeros(IMAGES, int), "last_pred": pred}
    return RunData(
        Path(model),
        Config(model=model, seed=seed, epochs=30, milestones=(15, 23)),
        result,
        [],
        dict(metrics, not_reached=[]),
        predictions,
    )


def model_runs(model, to80, fluct, right, shared=None, diverged=(None, None, None)):
    """Three seeds; ``shared`` (seed -> mask) makes the images a model gets right overlap another's."""
    out = []
    for seed, (e, f, n, d) in enumerate(zip(to80, fluct, right, diverged)):
        c = correct_mask(n, seed) if shared is None else shared[seed].copy()
        if shared is not None:
            extra = n - int(c.sum())  # flip wrong images to right (or back) to reach n hits
            idx = np.flatnonzero(~c if extra > 0 else c)[: abs(extra)]
            c[idx] = extra > 0
        out.append(
            run(
                model,
                seed,
                {
                    "epochs_to_80": e,
                    "epochs_to_train_loss": e - 1,
                    "phase1_train_loss_mean": 0.1 * e,
                    "phase1_val_acc_fluctuation": f,
                },
                c,
                d,
            )
        )
    return out


BASE = {s: correct_mask(9300, s) for s in range(3)}
RES = model_runs("resnet18", [5, 6, 5], [1.0, 1.2, 1.1], [9500, 9490, 9510], BASE)
VGG = model_runs("vgg19_bn", [12, 13, 13], [3.0, 3.5, 3.2], [9290, 9270, 9300], BASE)


def decided(*vs):
    return decide_all(list(vs))


def test_clear_effects_are_supported_and_their_mirror_contradicted():
    (v,) = decided(h1(RES, VGG))
    assert v.label == SUPPORTED
    assert "Holm p = " in v.sentence() and "smallest effect of interest 1 epochs" in v.sentence()
    (v,) = decided(h1(VGG, RES))
    assert v.label == CONTRADICTED
    (v,) = decided(*h2(RES, VGG, twin=False, min_effect=0.3))
    assert v.label == SUPPORTED and "parameters 11.17M vs 38.96M" in v.sentence()
    assert "two-level bootstrap (3 seeds × 10,000 images" in v.sentence()


def test_more_parameters_contradict_h2_whatever_the_accuracy():
    (v,) = decided(*h2(VGG, RES, twin=False, min_effect=0.3))
    assert v.label == CONTRADICTED


def test_ties_at_every_seed_give_no_interval_and_no_verdict():
    tied = model_runs("vgg19_bn", [5, 6, 5], [1.0, 1.2, 1.1], [9500, 9490, 9510], BASE)
    (v,) = decided(h1(RES, tied))
    assert v.label == NOT_SHOWN
    epochs = v.tests[0]
    assert epochs.estimate.ci_low is None and epochs.estimate.p_value is None and epochs.p_holm is None
    assert "no interval" in epochs.text() and "p = 0" not in v.sentence()


def test_a_gain_below_the_smallest_effect_of_interest_is_not_shown_however_small_its_p():
    (v,) = decided(*h2(RES, VGG, twin=False, min_effect=0.3))
    assert v.tests[0].p_holm < 0.01 and v.label == SUPPORTED  # about +2 pp
    (v,) = decided(*h2(RES, VGG, twin=False, min_effect=5.0))
    assert v.tests[0].p_holm < 0.01 and v.label == NOT_SHOWN


def test_h2_against_the_plain_twin_is_not_applicable_and_accuracy_is_judged_alone():
    plain = model_runs("plain18", [8, 9, 8], [2.0, 2.1, 2.2], [9290, 9270, 9300], BASE)
    h, acc = decided(*h2(RES, plain, twin=True, min_effect=0.3))
    assert h.label == NOT_APPLICABLE and "173,824" in h.sentence()
    assert acc.label == SUPPORTED and acc.hypothesis == "Final test accuracy"


def test_one_seed_shows_nothing_on_accuracy():
    (v,) = decided(*h2(RES[:1], VGG[:1], twin=False, min_effect=0.3))
    assert v.label == NOT_SHOWN
    assert v.tests[0].estimate.p_value is None and "one seed" in v.sentence()


def test_a_diverged_run_counts_against_its_model_in_h1():
    shaky = model_runs(
        "resnet18", [5, 6, 5], [1.0, 1.2, 1.1], [9500, 9490, 9510], BASE, diverged=(None, {"epoch": 7, "step": 3}, None)
    )
    (v,) = decided(h1(shaky, VGG))
    assert v.label == CONTRADICTED and "diverged: resnet18 1 of 3 seeds, vgg19_bn 0 of 3" in v.sentence()
    (acc,) = decided(*h2(shaky, VGG, twin=False, min_effect=0.3))  # no final weights: left out, named
    assert acc.tests[0].estimate.n == 2 and "left out, diverged: resnet18 seed 1" in acc.sentence()


def test_an_accuracy_effect_needs_the_paired_t_as_well_as_the_bootstrap():
    # Seeds disagree in sign: the bootstrap over 3 seeds alone would be too liberal.
    res = model_runs("resnet18", [5, 6, 5], [1.0, 1.2, 1.1], [9600, 9300, 9610], BASE)
    assert accuracy_evidence(res, VGG).bootstrap.p_value < 0.01  # alone it would say "supported"
    (v,) = decided(*h2(res, VGG, twin=False, min_effect=0.3))
    t_p = next(n for n in v.notes if n.startswith("paired t over seeds"))
    assert v.label == NOT_SHOWN and "95% CI" in t_p
    assert v.tests[0].estimate.p_value >= 0.05


def test_holm_adjusts_over_the_whole_family():
    vs = verdicts({"resnet18": RES, "vgg19_bn": VGG})
    tests = [t for v in vs for t in v.tests]
    raw = [t.estimate.p_value for t in tests if t.estimate.p_value is not None]
    adjusted = [t.p_holm for t in tests if t.p_holm is not None]
    assert len(adjusted) == len(raw) >= 4
    assert min(adjusted) >= len(raw) * min(raw) - 1e-12  # the smallest p is multiplied by the family size


def test_pairs_each_resnet_with_its_twin_and_every_non_resnet():
    assert pairs(["resnet18", "plain18", "vgg19_bn"]) == [
        ("resnet18", "plain18", True),
        ("resnet18", "vgg19_bn", False),
    ]
    assert pairs(["resnet34", "plain18"]) == []  # a plain net of another depth is no control for shortcuts
    labels = [(v.hypothesis[:2], v.a, v.b) for v in verdicts({"resnet18": RES, "vgg19_bn": VGG})]
    assert labels == [("H1", "resnet18", "vgg19_bn"), ("H2", "resnet18", "vgg19_bn")]
