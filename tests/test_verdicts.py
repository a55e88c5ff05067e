"""Verdict rules on constructed cases: clear win, clear loss, overlap, too few seeds."""

from archbench.analysis.verdicts import INCONCLUSIVE, NOT_SUPPORTED, SUPPORTED, RunFacts, h1, h2, verdicts


def runs(model, params, accs, to80, wobble, epochs=30):
    return [RunFacts(model, seed, params, epochs, acc,
                     {"epochs_to_80": e, "phase1_val_acc_mean_abs_change": w})
            for seed, (acc, e, w) in enumerate(zip(accs, to80, wobble))]


RES = runs("resnet18", 11_173_962, [95.0, 94.9, 95.1], [5, 6, 5], [1.0, 1.2, 1.1])
VGG = runs("vgg19_bn", 38_958_922, [92.9, 92.7, 93.0], [12, 13, 12], [3.0, 3.5, 3.2])


def test_h1_clear_win_clear_loss_and_overlap():
    assert h1(RES, VGG).verdict == SUPPORTED
    assert h1(VGG, RES).verdict == NOT_SUPPORTED
    same = runs("plain18", 11_000_138, [94.0, 94.5, 94.2], [5, 6, 6], [1.1, 1.0, 1.3])
    v = h1(RES, same)
    assert v.verdict == INCONCLUSIVE and len(v.evidence) == 2 and "95% CI" in v.evidence[0]


def test_h1_one_metric_worse_is_not_supported_even_if_the_other_is_better():
    faster_but_wobblier = runs("resnet18", 11_173_962, [95.0, 95.1, 94.9], [5, 5, 6], [4.0, 4.2, 4.1])
    assert h1(faster_but_wobblier, VGG).verdict == NOT_SUPPORTED


def test_never_reaching_80_counts_as_run_length_plus_one():
    never = runs("plain34", 21_108_298, [60.0, 61.0, 59.0], [None, None, None], [3.0, 3.1, 3.2], epochs=30)
    v = h1(RES, never)
    assert v.verdict == SUPPORTED and "-25" in v.evidence[0]  # 5.33 − 31


def test_h2_needs_fewer_parameters_and_a_clear_accuracy_gain():
    assert h2(RES, VGG).verdict == SUPPORTED
    assert h2(VGG, RES).verdict == NOT_SUPPORTED  # more parameters
    close = runs("vgg19_bn", 38_958_922, [95.2, 94.8, 95.0], [12, 13, 12], [3.0, 3.5, 3.2])
    assert h2(RES, close).verdict == INCONCLUSIVE
    v = h2(RES, VGG)
    assert v.evidence[0] == "parameters: 11.17M vs 38.96M" and "Welch's t" in v.evidence[1]


def test_single_seed_is_inconclusive_not_a_guess():
    assert h1(RES[:1], VGG[:1]).verdict == INCONCLUSIVE
    assert h2(RES[:1], VGG[:1]).verdict == INCONCLUSIVE


def test_verdicts_pair_each_resnet_with_each_other_model():
    plain = runs("plain18", 11_000_138, [93.0, 93.2, 93.1], [8, 9, 8], [2.0, 2.1, 2.2])
    pairs = [(v.hypothesis[:2], v.a, v.b) for v in verdicts({"resnet18": RES, "plain18": plain, "vgg19_bn": VGG})]
    assert pairs == [("H1", "resnet18", "plain18"), ("H2", "resnet18", "plain18"),
                     ("H1", "resnet18", "vgg19_bn"), ("H2", "resnet18", "vgg19_bn")]
    deep = runs("resnet34", 21_282_122, [95.2, 95.3, 95.1], [5, 5, 6], [1.0, 1.1, 1.0])
    pairs = [(v.a, v.b) for v in verdicts({"resnet34": deep, "plain18": plain})][::2]
    assert pairs == []  # a plain net of another depth is no control for the shortcuts
