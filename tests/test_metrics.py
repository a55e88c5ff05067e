"""Convergence/stability metrics on hand-made histories with known answers."""

import numpy as np
import pytest

from archbench.analysis import metrics


def H(lr, train_acc, val_acc, train_loss, val_loss):
    """Records from per-epoch columns (equal-length lists), epochs from 1."""
    cols = (lr, train_acc, val_acc, train_loss, val_loss)
    assert len({len(c) for c in cols}) == 1
    return [
        {"epoch": i + 1, "lr": a, "train_acc": b, "val_acc": c, "train_loss": d, "val_loss": e}
        for i, (a, b, c, d, e) in enumerate(zip(*cols))
    ]


# lr 0.1 for epochs 1-5, 0.01 for 6-8, 0.001 for 9-10.
# Phase-1 val acc is the quadratic 80 + 4t − t² (t = -2..2) plus the cubic orthogonal
# polynomial (-1, 2, 0, -2, 1), which a quadratic fit cannot follow: its fluctuation is
# exactly the RMS of that cubic, √2.
HIST = H(
    lr=[0.1] * 5 + [0.01] * 3 + [0.001] * 2,
    train_acc=[50, 70, 80, 84, 85, 92, 94, 95, 96, 96.5],
    val_acc=[67, 77, 80, 81, 85, 90, 91, 90.5, 91.5, 91.5],
    train_loss=[1.5, 0.9, 0.6, 0.55, 0.5, 0.3, 0.2, 0.15, 0.12, 0.11],
    val_loss=[1.2, 0.8, 0.7, 0.75, 0.7, 0.40, 0.35, 0.36, 0.33, 0.34],
)


def flat_run(n, val_acc=10.0, train_loss=2.3):
    """A run that learns nothing: one LR, constant accuracy and loss."""
    return H([0.1] * n, [val_acc] * n, [val_acc] * n, [train_loss] * n, [2.3] * n)


def test_lr_phases_split_on_lr_changes():
    assert [[r["epoch"] for r in p] for p in metrics.lr_phases(HIST)] == [[1, 2, 3, 4, 5], [6, 7, 8], [9, 10]]
    # a rate that went through float arithmetic is still the same phase
    lr2 = 0.1 * (1 + 1e-12)
    assert lr2 != 0.1 and len(metrics.lr_phases(H([0.1, lr2], [1, 1], [1, 1], [1, 1], [1, 1]))) == 1


def test_first_epoch_above_and_below():
    assert metrics.first_epoch(HIST, "val_acc", 80) == 3  # reached with equality
    assert metrics.first_epoch(HIST, "val_acc", 90) == 6
    assert metrics.first_epoch(HIST, "val_acc", 95) is None
    assert metrics.first_epoch(HIST, "train_loss", 0.5, below=True) == 5  # reached with equality
    assert metrics.first_epoch(HIST, "val_loss", 0.35, below=True) == 7
    assert metrics.first_epoch(HIST, "val_loss", 0.1, below=True) is None
    nan_run = H([0.1] * 2, [10, 10], [10, 10], [float("nan"), 0.4], [2, 2])
    assert metrics.first_epoch(nan_run, "train_loss", 0.5, below=True) == 2  # a NaN epoch is not "below"


def test_fluctuation_hand_computed():
    cubic = np.array([-1, 2, 0, -2, 1], dtype=float)
    t = np.arange(-2, 3)
    assert metrics.fluctuation(cubic) == pytest.approx(2**0.5)
    # a quadratic trend underneath changes nothing: the smoother takes it all
    assert metrics.fluctuation(cubic + 3 * t**2 + t + 5) == pytest.approx(2**0.5)
    assert metrics.fluctuation(3 * t**2 + t + 5) == pytest.approx(0, abs=1e-9)
    assert metrics.fluctuation([1, 2, 3, 4]) is None  # shorter than the 5-epoch window
    assert metrics.fluctuation([1, 2, 3, 4], window=3) is not None


def test_fluctuation_ignores_a_steep_smooth_climb_but_not_noise():
    epoch = np.arange(1, 51)
    climb = 100 - 90 * np.exp(-epoch / 3)
    # the old first-phase metric, mean |Δ val acc|, scored this noiseless curve as unstable
    assert np.abs(np.diff(climb)).mean() > 1.0
    assert metrics.fluctuation(climb) < 0.1
    noisy = [metrics.fluctuation(climb + e) for e in np.random.default_rng(1).normal(0, 1.0, (500, 50))]
    # the trend absorbs part of the noise: ~0.7 of its sd, as the docstring says
    assert 0.5 < min(noisy[:1]) and max(noisy[:1]) < 1.0
    assert np.mean(noisy) == pytest.approx(0.71, abs=0.03)


def test_phase_stability():
    p1, p2, p3 = metrics.phase_stability(HIST)
    # phase 1 val acc 67, 77, 80, 81, 85: mean 78, deviations -11, -1, 2, 3, 7
    assert p1["val_acc_std"] == pytest.approx(((121 + 1 + 4 + 9 + 49) / 5) ** 0.5)
    assert p1["val_acc_fluctuation"] == pytest.approx(2**0.5)
    assert (p1["lr"], p1["first_epoch"], p1["last_epoch"]) == (0.1, 1, 5)
    assert p2["val_acc_fluctuation"] is None and p3["val_acc_fluctuation"] is None  # 3 and 2 epochs < 5
    assert p2["val_acc_std"] == pytest.approx(np.std([90, 91, 90.5]))
    assert (p3["first_epoch"], p3["last_epoch"], p3["val_acc_std"]) == (9, 10, 0.0)
    assert "val_acc_mean_abs_change" not in p1


def test_milestone_jumps_compare_means_either_side():
    j1, j2 = metrics.milestone_jumps(HIST)
    assert j1["after_epoch"] == 5 and (j1["lr_from"], j1["lr_to"]) == (0.1, 0.01) and j1["window"] == 3
    # epochs 3-5 vs 6-8
    assert j1["val_acc_before"] == pytest.approx(82) and j1["val_acc_after"] == pytest.approx(90.5)
    assert j1["val_acc_jump"] == pytest.approx(8.5)
    assert j1["val_loss_jump"] == pytest.approx((0.40 + 0.35 + 0.36) / 3 - (0.7 + 0.75 + 0.7) / 3)
    # the last phase has 2 epochs, so both sides shrink to 2: epochs 7-8 vs 9-10
    assert j2["after_epoch"] == 8 and j2["window"] == 2
    assert j2["val_acc_jump"] == pytest.approx(91.5 - (91 + 90.5) / 2)
    assert j2["val_loss_jump"] == pytest.approx((0.33 + 0.34) / 2 - (0.35 + 0.36) / 2)
    assert metrics.milestone_jumps(flat_run(5)) == []


def test_milestone_jump_of_pure_noise_is_unbiased_unlike_best_of_three():
    rng = np.random.default_rng(0)
    runs, sd, n = 4000, 0.2, 10  # noise-only runs, one LR step after epoch 5
    new_acc, new_loss, old_acc = [], [], []
    for acc, loss in zip(90 + rng.normal(0, sd, (runs, n)), 0.3 + rng.normal(0, sd, (runs, n))):
        recs = H([0.1] * 5 + [0.01] * 5, [99.0] * n, acc.tolist(), [0.01] * n, loss.tolist())
        (j,) = metrics.milestone_jumps(recs)
        new_acc.append(j["val_acc_jump"])
        new_loss.append(j["val_loss_jump"])
        old_acc.append(acc[5:8].max() - acc[4])  # the old rule: best of 3 after vs 1 before
    assert abs(np.mean(new_acc)) < 0.02 and abs(np.mean(new_loss)) < 0.02
    assert np.mean(old_acc) > 0.1  # E[max of 3 N(0, 0.2)] ≈ +0.17 pp from noise alone


def test_plateau_over_last_epochs():
    p = metrics.plateau(HIST, epochs=3)
    assert p == {
        "epochs": 3,
        "val_acc_mean": pytest.approx((90.5 + 91.5 + 91.5) / 3),
        "val_acc_min": 90.5,
        "val_acc_max": 91.5,
        "val_acc_range": pytest.approx(1.0),
    }
    assert metrics.plateau(HIST)["epochs"] == 10  # fewer epochs than the window: all of them


def test_generalization_gap_and_best_epoch():
    g = metrics.generalization_gap(HIST)
    assert g["acc_gap"] == pytest.approx(96.5 - 91.5) and g["loss_gap"] == pytest.approx(0.34 - 0.11)
    assert metrics.best_epoch(HIST) == {"epoch": 9, "val_acc": 91.5, "val_loss": 0.33}  # first of the tie


def test_summarize_flattens_everything():
    s = metrics.summarize(HIST)
    assert (s["epochs_to_80"], s["epochs_to_90"], s["epochs_to_train_loss"]) == (3, 6, 5)
    assert s["not_reached"] == []
    assert s["phase1_train_loss_mean"] == pytest.approx((1.5 + 0.9 + 0.6 + 0.55 + 0.5) / 5)
    assert s["phase1_val_acc_fluctuation"] == pytest.approx(2**0.5)
    assert s["phase1_val_acc_std"] == pytest.approx(36.8**0.5)
    assert s["milestone1_val_acc_jump"] == pytest.approx(8.5) and s["milestone2_val_loss_jump"] == pytest.approx(-0.02)
    assert "milestone3_val_acc_jump" not in s
    assert s["plateau_val_acc_range"] == pytest.approx(91.5 - 67)  # 10 epochs < 20: the whole run
    assert s["final_acc_gap"] == pytest.approx(5) and s["best_epoch"] == 9 and s["best_val_acc"] == 91.5
    assert not any("mean_abs_change" in k for k in s)
    assert metrics.summarize(HIST, planned_epochs=100) == s  # everything reached: the plan is irrelevant


def test_summarize_counts_never_reached_as_planned_plus_one():
    short = flat_run(3)  # e.g. diverged and stopped after 3 of 100 planned epochs
    s = metrics.summarize(short, planned_epochs=100)
    assert (s["epochs_to_80"], s["epochs_to_90"], s["epochs_to_train_loss"]) == (101, 101, 101)
    assert s["not_reached"] == ["epochs_to_80", "epochs_to_90", "epochs_to_train_loss"]
    assert metrics.summarize(short)["epochs_to_90"] == 4  # default plan: the records' length
    partly = metrics.summarize(H([0.1] * 4, [90] * 4, [70, 85, 85, 85], [1.0] * 4, [1.0] * 4), planned_epochs=6)
    assert (partly["epochs_to_80"], partly["epochs_to_90"], partly["epochs_to_train_loss"]) == (2, 7, 7)
    assert partly["not_reached"] == ["epochs_to_90", "epochs_to_train_loss"]
    assert partly["phase1_val_acc_fluctuation"] is None  # 4 epochs < 5
    with pytest.raises(ValueError):
        metrics.summarize(HIST, planned_epochs=5)  # a plan shorter than the history is a mistake
    with pytest.raises(ValueError):
        metrics.summarize([])


def test_labels_cover_summarize_keys():
    keys = set(metrics.summarize(HIST)) - {"not_reached"}
    assert keys <= set(metrics.METRIC_LABELS)
    assert metrics.LOWER_IS_BETTER == {
        "epochs_to_80",
        "epochs_to_90",
        "epochs_to_train_loss",
        "phase1_train_loss_mean",
        "phase1_val_acc_fluctuation",
        "phase1_val_acc_std",
    }
    assert metrics.METRIC_LABELS["epochs_to_train_loss"] == "epochs to train loss ≤ 0.5"
    assert (
        metrics.METRIC_LABELS["phase1_val_acc_fluctuation"]
        == "val acc fluctuation around its trend, first LR phase (pp RMS)"
    )
    assert (
        metrics.METRIC_LABELS["milestone1_val_acc_jump"]
        == "val acc change at 1st LR step, mean of 3 epochs after − before (pp)"
    )
    assert metrics.METRIC_LABELS["milestone2_val_loss_jump"].startswith("val loss change at 2nd LR step")


def test_mean_band_averages_the_runs_that_reached_each_epoch():
    a = H([0.1] * 4, [0] * 4, [10, 20, 30, 40], [1] * 4, [1] * 4)
    b = H([0.1] * 3, [0] * 3, [20, 40, 60], [1] * 3, [1] * 3)
    epochs, mean, std, count = metrics.mean_band([a, b], "val_acc")
    assert epochs == [1, 2, 3, 4] and count == [2, 2, 2, 1]
    assert mean == pytest.approx([15, 30, 45, 40])
    assert std == pytest.approx([10 / 2**0.5, 20 / 2**0.5, 30 / 2**0.5, 0.0])  # sample std, ddof=1
    assert metrics.mean_band([a], "val_acc") == ([1, 2, 3, 4], [10, 20, 30, 40], [0.0] * 4, [1] * 4)
    with pytest.raises(ValueError):
        metrics.mean_band([a, b[1:]], "val_acc")  # epochs 1-3 vs 2-3: not the same epochs
    with pytest.raises(ValueError):
        metrics.mean_band([], "val_acc")
