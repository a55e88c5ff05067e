"""Convergence and stability metrics of one run, computed from its history records alone.

Owns the scalar metrics that tables, verdicts and figures compare across architectures and
seeds: epochs to reach accuracy and training-loss levels, fluctuation of val accuracy
around its trend, the change of val accuracy and loss at each LR step, the plateau, the
generalization gap and the best epoch; plus the across-seed mean band of a curve.

Pure functions of a list of per-epoch records (``epoch`` from 1, ``lr`` used during that
epoch, ``train_loss``, ``train_acc``, ``val_loss``, ``val_acc``; accuracies in %, losses
in nats of cross-entropy). LR phases and milestones are read from the ``lr`` column
itself, so the metrics need no config; only ``summarize`` takes the run's planned length,
because a diverged run stops early and its records do not say how long it was meant to be.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.signal import savgol_filter

Records = Sequence[dict]

JUMP_WINDOW = 3  # epochs averaged on each side of an LR step
FLUCT_WINDOW = 5  # epochs in the Savitzky–Golay window of the val-accuracy trend
FLUCT_POLYORDER = 2  # degree of the local polynomial trend (dimensionless)
PLATEAU_EPOCHS = 20  # epochs at the end of the run averaged as the plateau
TRAIN_LOSS_LEVEL = 0.5  # nats (cross-entropy): training loss level for epochs-to-reach
ACC_LEVELS = (80.0, 90.0)  # val accuracy levels (%) for epochs-to-reach


def lr_phases(records: Records) -> list[list[dict]]:
    """Consecutive runs of epochs trained at the same learning rate."""
    phases: list[list[dict]] = []
    for r in records:
        # lr round-trips through JSON and schedulers multiply it, so equal rates may differ in the last bits
        if phases and np.isclose(phases[-1][-1]["lr"], r["lr"], rtol=1e-9, atol=0):
            phases[-1].append(r)
        else:
            phases.append([r])
    return phases


def first_epoch(records: Records, key: str, threshold: float, below: bool = False) -> int | None:
    """First epoch with ``record[key] >= threshold`` (``<=`` if ``below``); None if never.

    NaN (a diverged epoch) compares false either way, so it never counts as reached.
    """
    hit = (lambda v: v <= threshold) if below else (lambda v: v >= threshold)
    return next((r["epoch"] for r in records if hit(r[key])), None)


def fluctuation(values: Sequence[float], window: int = FLUCT_WINDOW) -> float | None:
    """RMS deviation of ``values`` from their Savitzky–Golay trend; None if fewer than ``window``.

    The local quadratic follows a climb however steep, so only epoch-to-epoch scatter is
    left. The trend also absorbs part of that scatter: for white noise of sd s the result
    is about 0.7 s with the default window, so compare runs with each other, not with s.
    """
    y = np.asarray(values, dtype=float)
    if len(y) < window:
        return None
    trend = savgol_filter(y, window, FLUCT_POLYORDER, mode="interp")
    return float(np.sqrt(np.mean((y - trend) ** 2)))


def phase_stability(records: Records) -> list[dict]:
    """Per LR phase: spread (std, ddof=0) of val accuracy and its fluctuation around the trend."""
    out = []
    for phase in lr_phases(records):
        acc = [r["val_acc"] for r in phase]
        out.append(
            {
                "lr": phase[0]["lr"],
                "first_epoch": phase[0]["epoch"],
                "last_epoch": phase[-1]["epoch"],
                "val_acc_std": float(np.std(acc)),
                "val_acc_fluctuation": fluctuation(acc),
            }
        )
    return out


def milestone_jumps(records: Records, window: int = JUMP_WINDOW) -> list[dict]:
    """At each LR change: mean of the last k epochs before it vs mean of the first k after.

    k is ``window``, or the shorter phase's length if either side has fewer epochs; the same
    k on both sides keeps the two means equally far from the step. Means, not the best
    epoch, so that noise alone averages to no jump. ``val_acc_jump`` > 0 and
    ``val_loss_jump`` < 0 mean the step helped.
    """
    out = []
    phases = lr_phases(records)
    for before, after in zip(phases, phases[1:]):
        k = min(window, len(before), len(after))
        pre, post = before[-k:], after[:k]
        row: dict[str, Any] = {
            "after_epoch": before[-1]["epoch"],
            "lr_from": before[-1]["lr"],
            "lr_to": after[0]["lr"],
            "window": k,
        }
        for key in ("val_acc", "val_loss"):
            b = float(np.mean([r[key] for r in pre]))
            a = float(np.mean([r[key] for r in post]))
            row.update({f"{key}_before": b, f"{key}_after": a, f"{key}_jump": a - b})
        out.append(row)
    return out


def plateau(records: Records, epochs: int = PLATEAU_EPOCHS) -> dict:
    """Mean and range of val accuracy over the last ``epochs`` epochs (all, if fewer)."""
    acc = np.array([r["val_acc"] for r in records[-epochs:]], dtype=float)
    return {
        "epochs": len(acc),
        "val_acc_mean": float(acc.mean()),
        "val_acc_min": float(acc.min()),
        "val_acc_max": float(acc.max()),
        "val_acc_range": float(acc.max() - acc.min()),
    }


def generalization_gap(records: Records) -> dict:
    """Final epoch: train − val accuracy (pp) and val − train loss (nats)."""
    r = records[-1]
    return {"acc_gap": r["train_acc"] - r["val_acc"], "loss_gap": r["val_loss"] - r["train_loss"]}


def best_epoch(records: Records) -> dict:
    """The epoch of highest val accuracy (the first, on ties)."""
    best = max(records, key=lambda r: (r["val_acc"], -r["epoch"]))
    return {"epoch": best["epoch"], "val_acc": best["val_acc"], "val_loss": best["val_loss"]}


def summarize(records: Records, planned_epochs: int | None = None) -> dict[str, Any]:
    """The scalar metrics of a run, flat, for tables and for comparing runs across seeds.

    An ``epochs_to_*`` level never reached counts as ``planned_epochs + 1`` (default: the
    number of records), so tables and verdicts rank a run that never got there behind every
    run that did, and a run that diverged early behind one that merely finished late; those
    keys are listed, sorted, under ``not_reached``.
    """
    if not records:
        raise ValueError("no history records")
    planned = len(records) if planned_epochs is None else planned_epochs
    if planned < records[-1]["epoch"]:
        raise ValueError(f"planned_epochs={planned} is shorter than the history ({records[-1]['epoch']} epochs)")

    reached: dict[str, int | None] = {
        f"epochs_to_{level:g}": first_epoch(records, "val_acc", level) for level in ACC_LEVELS
    }
    reached["epochs_to_train_loss"] = first_epoch(records, "train_loss", TRAIN_LOSS_LEVEL, below=True)
    out: dict[str, Any] = {k: planned + 1 if v is None else v for k, v in reached.items()}

    phase1 = lr_phases(records)[0]
    stab1 = phase_stability(phase1)[0]
    out.update(
        phase1_train_loss_mean=float(np.mean([r["train_loss"] for r in phase1])),
        phase1_val_acc_fluctuation=stab1["val_acc_fluctuation"],
        phase1_val_acc_std=stab1["val_acc_std"],
    )
    for i, j in enumerate(milestone_jumps(records), start=1):
        out[f"milestone{i}_val_acc_jump"] = j["val_acc_jump"]
        out[f"milestone{i}_val_loss_jump"] = j["val_loss_jump"]
    p = plateau(records)
    out.update(plateau_val_acc_mean=p["val_acc_mean"], plateau_val_acc_range=p["val_acc_range"])
    out.update({f"final_{k}": v for k, v in generalization_gap(records).items()})
    b = best_epoch(records)
    out.update(best_epoch=b["epoch"], best_val_acc=b["val_acc"])
    out["not_reached"] = sorted(k for k, v in reached.items() if v is None)
    return out


def _ordinal(i: int) -> str:
    return {1: "1st", 2: "2nd", 3: "3rd"}.get(i, f"{i}th")


METRIC_LABELS: dict[str, str] = {
    **{f"epochs_to_{level:g}": f"epochs to {level:g}% val acc" for level in ACC_LEVELS},
    "epochs_to_train_loss": f"epochs to train loss ≤ {TRAIN_LOSS_LEVEL:g}",
    "phase1_train_loss_mean": "mean train loss per epoch, first LR phase (nats)",
    "phase1_val_acc_fluctuation": "val acc fluctuation around its trend, first LR phase (pp RMS)",
    "phase1_val_acc_std": "val acc std, first LR phase (pp)",
    # the study's schedule has 2 LR steps; the rest leave room for longer schedules
    **{
        k: v
        for i in range(1, 10)
        for k, v in (
            (
                f"milestone{i}_val_acc_jump",
                f"val acc change at {_ordinal(i)} LR step, mean of {JUMP_WINDOW} epochs after − before (pp)",
            ),
            (
                f"milestone{i}_val_loss_jump",
                f"val loss change at {_ordinal(i)} LR step, mean of {JUMP_WINDOW} epochs after − before (nats)",
            ),
        )
    },
    "plateau_val_acc_mean": f"plateau val acc, mean of last {PLATEAU_EPOCHS} epochs (%)",
    "plateau_val_acc_range": f"plateau val acc range, max − min of last {PLATEAU_EPOCHS} epochs (pp)",
    "final_acc_gap": "final train − val acc gap (pp)",
    "final_loss_gap": "final val − train loss gap (nats)",
    "best_epoch": "epoch of best val acc",
    "best_val_acc": "best val acc (%)",
}

LOWER_IS_BETTER: frozenset[str] = frozenset(
    [f"epochs_to_{level:g}" for level in ACC_LEVELS]
    + ["epochs_to_train_loss", "phase1_train_loss_mean", "phase1_val_acc_fluctuation", "phase1_val_acc_std"]
)


def mean_band(runs: Sequence[Records], key: str) -> tuple[list[int], list[float], list[float], list[int]]:
    """Per epoch that any run reached: the mean and sample std (ddof=1) of ``key`` over the
    runs that reached it, and how many did.

    Runs of one setting differ in length only when some stopped early (diverged); cutting
    every seed at the shortest would hide the others' later epochs. The std is 0.0 where
    one run contributes.
    """
    if not runs or any(not r for r in runs):
        raise ValueError("mean_band needs at least one run, each with records")
    n = max(len(r) for r in runs)
    longest = max(runs, key=len)
    epochs = [r["epoch"] for r in longest]
    if any([r["epoch"] for r in run] != epochs[: len(run)] for run in runs):
        raise ValueError("runs do not share the same epoch numbers")
    means, stds, counts = [], [], []
    for i in range(n):
        v = np.array([run[i][key] for run in runs if len(run) > i], dtype=float)
        means.append(float(v.mean()))
        stds.append(float(v.std(ddof=1)) if v.size > 1 else 0.0)
        counts.append(int(v.size))
    return epochs, means, stds, counts
