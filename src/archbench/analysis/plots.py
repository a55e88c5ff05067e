"""Figures, made from run files alone: per-run curves, and the comparison's figures
(curves across seeds as mean ± band, per-seed dots, confusion matrices, reliability
diagram, gradient flow on one shared colour scale).

Train curves are dashed and validation curves solid, as in the study. Losses are drawn
on a log axis: late-training differences (0.002 vs 0.02) vanish on a linear one.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from archbench.analysis.metrics import mean_band
from archbench.config import read_json
from archbench.io_utils import atomic_write_bytes
from archbench.train import gradflow, history
from archbench.train.runner import CONFIG_NAME

METRICS = (("loss", "Loss (log scale)"), ("acc", "Accuracy (%)"))
MAX_TICK_LABELS = 20  # beyond this many classes (CIFAR-100) a confusion matrix labels every 10th


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    return plt


def _colors(n: int) -> list:
    return [_pyplot().rcParams["axes.prop_cycle"].by_key()["color"][i % 10] for i in range(n)]


def run_label(run_dir: Path) -> str:
    """The run's model, from its (checked) config.json; the folder's name if it has none."""
    path = Path(run_dir) / CONFIG_NAME
    return read_json(path).model if os.path.lexists(path) else Path(run_dir).name


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    _pyplot().close(fig)
    return path


def _draw_curves(ax, key: str, runs: list[list[dict]], label: str | None, color=None) -> None:
    """Train (dashed) and val (solid) curves: the mean over ``runs`` with a ±1 sd band if several."""
    from matplotlib.ticker import MaxNLocator

    for split, style in (("train", "--"), ("val", "-")):
        epochs, mean, sd, _ = mean_band(runs, f"{split}_{key}")
        marker = "o" if len(epochs) <= 20 else None  # a short run's points would vanish as bare lines
        ax.plot(
            epochs, mean, style, marker=marker, ms=3, color=color, label=None if label is None else f"{label} {split}"
        )
        if len(runs) > 1:
            ax.fill_between(epochs, np.subtract(mean, sd), np.add(mean, sd), color=color, alpha=0.15, lw=0)
    if key == "loss":
        ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


@dataclass(frozen=True)
class RunCurves:
    """What a run's own figures are drawn from, read and checked."""

    dir: Path
    label: str
    records: list[dict]
    flow: gradflow.Flow | None


def read_run(run_dir: Path) -> RunCurves:
    return RunCurves(Path(run_dir), run_label(run_dir), history.read(run_dir), gradflow.read(run_dir))


def plot_run(run_dir: Path) -> list[Path]:
    """``loss.png`` and ``accuracy.png`` in the run folder, and its gradient-flow figures; none
    for a run with no finished epoch. Every file is read before any figure is written, so a
    damaged one leaves the folder as it was."""
    return draw_run(read_run(run_dir))


def draw_run(run: RunCurves) -> list[Path]:
    if not run.records:
        return []
    plt = _pyplot()
    paths = []
    for key, ylabel in METRICS:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        _draw_curves(ax, key, [run.records], run.label)
        ax.set(xlabel="Epoch", ylabel=ylabel, title=f"{run.label}: {'loss' if key == 'loss' else 'accuracy'} curves")
        ax.grid(alpha=0.3, which="both")
        ax.legend()
        paths.append(_save(fig, run.dir / ("loss.png" if key == "loss" else "accuracy.png")))
    if run.flow is not None:
        paths += [
            plot_gradflow({run.label: run.flow}, run.dir / "gradflow.png"),
            plot_gradflow_ratio(run.flow, run.label, run.dir / "gradflow_ratio.png"),
        ]
    return paths


def plot_overlay(groups: dict[str, list[list[dict]]], out_dir: Path) -> list[Path]:
    """``overlay_loss.png`` and ``overlay_accuracy.png``: one colour per model, mean ± 1 sd over its seeds."""
    plt = _pyplot()
    colors = _colors(len(groups))
    paths = []
    for key, ylabel in METRICS:
        fig, ax = plt.subplots(figsize=(8, 5))
        for (model, runs), color in zip(groups.items(), colors):
            _draw_curves(ax, key, runs, f"{model} (n={len(runs)})", color)
        seeds = max(len(r) for r in groups.values())
        band = ", band ±1 sd over seeds" if seeds > 1 else ""
        ax.set(xlabel="Epoch", ylabel=ylabel, title=f"{' vs '.join(groups)} (train dashed, val solid{band})")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
        paths.append(_save(fig, Path(out_dir) / f"overlay_{'loss' if key == 'loss' else 'accuracy'}.png"))
    return paths


def plot_per_seed(values: dict[str, list[tuple[int, float]]], path: Path, ylabel: str) -> Path:
    """One dot per seed and model (labelled with its seed), the model's mean as a bar."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(values), 4))
    for i, ((_model, pts), color) in enumerate(zip(values.items(), _colors(len(values)))):
        ys = [v for _, v in pts]
        xs = i + np.linspace(-0.12, 0.12, len(ys)) if len(ys) > 1 else [i]
        ax.scatter(xs, ys, color=color, zorder=3)
        for x, (seed, y) in zip(xs, pts):
            ax.annotate(f"seed {seed}", (x, y), xytext=(5, 0), textcoords="offset points", fontsize=7, va="center")
        ax.hlines(np.mean(ys), i - 0.25, i + 0.25, color=color, lw=2)
    ax.set_xticks(range(len(values)), list(values))
    ax.set_xlim(-0.6, len(values) - 0.4)
    ax.set(ylabel=ylabel, title="Per seed (dots) and mean (bar)")
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def plot_confusion(matrices: dict[str, np.ndarray], path: Path, classes: tuple[str, ...]) -> Path:
    """Row-normalised confusion matrices (true class down, predicted across), one panel per model."""
    plt = _pyplot()
    fig, axes = plt.subplots(
        1, len(matrices), figsize=(4.2 * len(matrices) + 0.8, 4.2), squeeze=False, layout="constrained"
    )
    im = None
    for ax, (model, m) in zip(axes[0], matrices.items()):
        with np.errstate(invalid="ignore", divide="ignore"):
            rows = 100.0 * m / m.sum(axis=1, keepdims=True)
        im = ax.imshow(rows, vmin=0, vmax=100, cmap="Blues")
        if len(classes) <= MAX_TICK_LABELS:
            ax.set_xticks(range(len(classes)), [c[:4] for c in classes], fontsize=7, rotation=90)
            ax.set_yticks(range(len(classes)), [c[:4] for c in classes], fontsize=7)
        else:
            ticks = range(0, len(classes), 10)
            ax.set_xticks(ticks, [str(t) for t in ticks], fontsize=7)
            ax.set_yticks(ticks, [f"{t} {classes[t][:8]}" for t in ticks], fontsize=7)
        ax.set(title=model, xlabel="predicted")
    axes[0][0].set_ylabel("true class")
    fig.colorbar(im, ax=axes[0].tolist(), label="% of the true class", shrink=0.8)
    return _save(fig, path)


def plot_reliability(curves: dict[str, dict], path: Path) -> Path:
    """Accuracy against confidence per bin; the diagonal is perfect calibration."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfectly calibrated")
    for (model, c), color in zip(curves.items(), _colors(len(curves))):
        ax.plot(c["confidence"], c["accuracy"], "o-", ms=4, color=color, label=f"{model} (ECE {c['ece']:.2f}%)")
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1),
        xlabel="confidence (top softmax probability)",
        ylabel="accuracy",
        title="Reliability diagram (final weights, all seeds)",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_gradflow(flows: dict[str, gradflow.Flow], path: Path) -> Path:
    """log10 ‖g‖/‖w‖ per layer over time, one panel per model, on ONE colour scale."""
    plt = _pyplot()
    logs = {m: np.log10(np.maximum(f.relative(), 1e-12)) for m, f in flows.items()}
    finite = np.concatenate([v[np.isfinite(v)] for v in logs.values()])
    vmin, vmax = np.percentile(finite, [1, 99]) if finite.size else (-6.0, 0.0)
    height = max(3.0, 0.12 * max(len(f.layers) for f in flows.values()) + 1.5)
    fig, axes = plt.subplots(len(flows), 1, figsize=(9, height * len(flows)), squeeze=False, layout="constrained")
    im = None
    for ax, (model, f) in zip(axes[:, 0], flows.items()):
        im = ax.imshow(
            logs[model].T,
            aspect="auto",
            origin="upper",
            cmap="viridis",
            vmin=vmin,
            vmax=vmax,
            extent=(0, f.t[-1], len(f.layers) - 0.5, -0.5),
        )
        step = max(1, len(f.layers) // 12)
        ax.set_yticks(range(0, len(f.layers), step), [f.layers[i] for i in range(0, len(f.layers), step)], fontsize=6)
        ax.set(xlabel="Epoch", ylabel="layer (input at top)", title=f"{model}: ‖grad‖ / ‖weight‖ per layer")
    fig.colorbar(im, ax=axes[:, 0].tolist(), label="log10 ‖g‖/‖w‖ (one scale for all panels)")
    return _save(fig, path)


def plot_gradflow_ratio(flow: gradflow.Flow, label: str, path: Path) -> Path:
    """First-layer over last-layer ‖g‖/‖w‖ over time: below 1, the input end learns more slowly."""
    plt = _pyplot()
    rel = flow.relative()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.semilogy(flow.t, rel[:, 0] / np.maximum(rel[:, -1], 1e-30), marker="o" if len(flow.t) <= 40 else None, ms=3)
    ax.set(
        xlabel="Epoch",
        ylabel=f"(‖g‖/‖w‖) {flow.layers[0]} ÷ {flow.layers[-1]}",
        title=f"{label}: first-layer / last-layer relative gradient",
    )
    ax.grid(alpha=0.3, which="both")
    return _save(fig, path)
