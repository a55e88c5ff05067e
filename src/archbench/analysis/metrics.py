"""Convergence and stability metrics of one run, computed from its history records alone.

Pure functions of a list of per-epoch records (``epoch``, ``lr``, ``train_loss``,
``train_acc``, ``val_loss``, ``val_acc``; accuracies in %). LR phases and milestones are
read from the ``lr`` column itself, so the metrics need no config.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

Records = Sequence[dict]
JUMP_WINDOW = 3  # epochs after a milestone whose best value counts as the jump's landing
PLATEAU_EPOCHS = 20  # the final stretch averaged as the plateau


def epochs_to_reach(records: Records, threshold: float, key: str = "val_acc") -> int | None:
    """First epoch whose ``key`` is at least ``threshold``; None if never reached."""
    return next((r["epoch"] for r in records if r[key] >= threshold), None)


def lr_phases(records: Records) -> list[list[dict]]:
    """Consecutive runs of epochs trained at the same learning rate."""
    phases: list[list[dict]] = []
    for r in records:
        if phases and np.isclose(phases[-1][-1]["lr"], r["lr"], rtol=1e-9, atol=0):
            phases[-1].append(r)
        else:
            phases.append([r])
    return phases


def phase_stability(records: Records) -> list[dict]:
    """Per LR phase: spread (std, ddof=0) and mean absolute epoch-to-epoch change of val accuracy."""
    out = []
    for phase in lr_phases(records):
        acc = np.array([r["val_acc"] for r in phase], dtype=float)
        out.append({"lr": phase[0]["lr"], "first_epoch": phase[0]["epoch"], "last_epoch": phase[-1]["epoch"],
                    "val_acc_std": float(acc.std()),
                    "val_acc_mean_abs_change": float(np.abs(np.diff(acc)).mean()) if len(acc) > 1 else 0.0})
    return out


def milestone_jumps(records: Records, window: int = JUMP_WINDOW) -> list[dict]:
    """At each LR change: last epoch before it vs the best of the ``window`` epochs after.

    ``val_acc_jump`` > 0 and ``val_loss_jump`` < 0 mean the step helped.
    """
    out = []
    phases = lr_phases(records)
    for before, after in zip(phases, phases[1:]):
        last, landing = before[-1], after[:window]
        best_acc = max(r["val_acc"] for r in landing)
        best_loss = min(r["val_loss"] for r in landing)
        out.append({"after_epoch": last["epoch"], "lr_from": last["lr"], "lr_to": after[0]["lr"],
                    "val_acc_before": last["val_acc"], "val_acc_after": best_acc,
                    "val_acc_jump": best_acc - last["val_acc"],
                    "val_loss_before": last["val_loss"], "val_loss_after": best_loss,
                    "val_loss_jump": best_loss - last["val_loss"]})
    return out


def plateau(records: Records, epochs: int = PLATEAU_EPOCHS) -> dict:
    """Mean and range of val accuracy over the last ``epochs`` epochs (all, if fewer)."""
    acc = np.array([r["val_acc"] for r in records[-epochs:]], dtype=float)
    return {"epochs": len(acc), "val_acc_mean": float(acc.mean()), "val_acc_min": float(acc.min()),
            "val_acc_max": float(acc.max()), "val_acc_range": float(acc.max() - acc.min())}


def generalization_gap(records: Records) -> dict:
    """Final epoch: train − val accuracy (pp) and val − train loss."""
    r = records[-1]
    return {"acc_gap": r["train_acc"] - r["val_acc"], "loss_gap": r["val_loss"] - r["train_loss"]}


def best_epoch(records: Records) -> dict:
    """The epoch of highest val accuracy (the first, on ties)."""
    best = max(records, key=lambda r: (r["val_acc"], -r["epoch"]))
    return {"epoch": best["epoch"], "val_acc": best["val_acc"], "val_loss": best["val_loss"]}


def summarize(records: Records) -> dict[str, float | None]:
    """The scalar metrics of a run, flat, for tables and for comparing runs across seeds."""
    if not records:
        raise ValueError("no history records")
    phases = phase_stability(records)
    jumps = milestone_jumps(records)
    out: dict[str, float | None] = {
        "epochs_to_80": epochs_to_reach(records, 80.0),
        "epochs_to_90": epochs_to_reach(records, 90.0),
        "phase1_val_acc_std": phases[0]["val_acc_std"],
        "phase1_val_acc_mean_abs_change": phases[0]["val_acc_mean_abs_change"],
    }
    for i, j in enumerate(jumps, start=1):
        out[f"milestone{i}_val_acc_jump"] = j["val_acc_jump"]
        out[f"milestone{i}_val_loss_jump"] = j["val_loss_jump"]
    p = plateau(records)
    out.update(plateau_val_acc_mean=p["val_acc_mean"], plateau_val_acc_range=p["val_acc_range"])
    out.update({f"final_{k}": v for k, v in generalization_gap(records).items()})
    b = best_epoch(records)
    out.update(best_epoch=b["epoch"], best_val_acc=b["val_acc"])
    return out
