"""Convergence/stability metrics on hand-made histories with known answers."""

import pytest

from archbench.analysis import metrics


def H(rows):
    """Records from (lr, train_acc, val_acc, train_loss, val_loss) tuples, epochs from 1."""
    return [{"epoch": i + 1, "lr": lr, "train_acc": ta, "val_acc": va, "train_loss": tl, "val_loss": vl}
            for i, (lr, ta, va, tl, vl) in enumerate(rows)]


# lr 0.1 for epochs 1-4, 0.01 for 5-7, 0.001 for 8-9
HIST = H([
    (0.1, 50, 60, 1.5, 1.2), (0.1, 70, 78, 0.9, 0.8), (0.1, 80, 82, 0.6, 0.7), (0.1, 85, 80, 0.5, 0.75),
    (0.01, 92, 90, 0.3, 0.40), (0.01, 94, 91, 0.2, 0.35), (0.01, 95, 90.5, 0.15, 0.36),
    (0.001, 96, 91.5, 0.12, 0.33), (0.001, 96.5, 91.5, 0.11, 0.34),
])


def test_epochs_to_reach_thresholds():
    assert metrics.epochs_to_reach(HIST, 80) == 3
    assert metrics.epochs_to_reach(HIST, 90) == 5
    assert metrics.epochs_to_reach(HIST, 95) is None


def test_lr_phases_split_on_lr_changes():
    assert [[r["epoch"] for r in p] for p in metrics.lr_phases(HIST)] == [[1, 2, 3, 4], [5, 6, 7], [8, 9]]


def test_phase_stability():
    p1, p2, p3 = metrics.phase_stability(HIST)
    # phase 1 val acc 60, 78, 82, 80: mean 75, deviations -15, 3, 7, 5
    assert p1["val_acc_std"] == pytest.approx(((225 + 9 + 49 + 25) / 4) ** 0.5)
    assert p1["val_acc_mean_abs_change"] == pytest.approx((18 + 4 + 2) / 3)
    assert p2["val_acc_mean_abs_change"] == pytest.approx((1 + 0.5) / 2)
    assert (p3["first_epoch"], p3["last_epoch"], p3["val_acc_std"]) == (8, 9, 0.0)


def test_milestone_jumps_compare_last_before_with_best_of_three_after():
    j1, j2 = metrics.milestone_jumps(HIST)
    assert j1["after_epoch"] == 4 and (j1["lr_from"], j1["lr_to"]) == (0.1, 0.01)
    assert j1["val_acc_jump"] == pytest.approx(91 - 80)
    assert j1["val_loss_jump"] == pytest.approx(0.35 - 0.75)
    assert j2["after_epoch"] == 7 and j2["val_acc_jump"] == pytest.approx(91.5 - 90.5)
    assert j2["val_loss_jump"] == pytest.approx(0.33 - 0.36)


def test_plateau_over_last_epochs():
    p = metrics.plateau(HIST, epochs=3)
    assert p == {"epochs": 3, "val_acc_mean": pytest.approx((90.5 + 91.5 + 91.5) / 3), "val_acc_min": 90.5,
                 "val_acc_max": 91.5, "val_acc_range": pytest.approx(1.0)}
    assert metrics.plateau(HIST)["epochs"] == 9  # fewer epochs than the window: all of them


def test_generalization_gap_and_best_epoch():
    g = metrics.generalization_gap(HIST)
    assert g["acc_gap"] == pytest.approx(96.5 - 91.5) and g["loss_gap"] == pytest.approx(0.34 - 0.11)
    assert metrics.best_epoch(HIST) == {"epoch": 8, "val_acc": 91.5, "val_loss": 0.33}  # first of the tie


def test_summarize_flattens_everything():
    s = metrics.summarize(HIST)
    assert s["epochs_to_80"] == 3 and s["epochs_to_90"] == 5 and s["best_epoch"] == 8
    assert s["milestone1_val_acc_jump"] == pytest.approx(11) and "milestone2_val_loss_jump" in s
    assert "milestone3_val_acc_jump" not in s
    assert s["plateau_val_acc_range"] == pytest.approx(91.5 - 60)  # 9 epochs < 20: the whole run
    flat = metrics.summarize(H([(0.1, 10, 12, 2.3, 2.2)]))
    assert flat["epochs_to_80"] is None and flat["phase1_val_acc_mean_abs_change"] == 0.0
