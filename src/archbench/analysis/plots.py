"""Figures, made from history files alone: per-run curves and overlays of several runs.

Train curves are dashed and validation curves solid, as in the study.
"""

from __future__ import annotations

from pathlib import Path

from archbench.train import history

METRICS = (("loss", "Loss"), ("acc", "Accuracy (%)"))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    return plt


def run_label(run_dir: Path) -> str:
    import json

    cfg = Path(run_dir) / "config.json"
    if cfg.is_file():
        try:
            return json.loads(cfg.read_text())["model"]
        except (ValueError, KeyError):
            pass
    return Path(run_dir).name


def _draw(ax, records: list[dict], key: str, label: str | None, color=None) -> None:
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in records]
    marker = "o" if len(epochs) <= 20 else None  # a short run's points would vanish as bare lines
    ax.plot(epochs, [r[f"train_{key}"] for r in records], "--", marker=marker, ms=3, color=color,
            label=None if label is None else f"{label} train")
    ax.plot(epochs, [r[f"val_{key}"] for r in records], "-", marker=marker, ms=3, color=color,
            label=None if label is None else f"{label} val")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _save(fig, path: Path) -> Path:
    from archbench.io_utils import atomic_write_bytes
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    return path


def plot_run(run_dir: Path) -> list[Path]:
    """``loss.png`` and ``accuracy.png`` in the run folder, and the gradient-flow figures if recorded."""
    plt = _pyplot()
    records, label = history.read(run_dir), run_label(run_dir)
    paths = []
    for key, ylabel in METRICS:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        _draw(ax, records, key, label)
        ax.set(xlabel="Epoch", ylabel=ylabel, title=f"{label}: {ylabel.split(' ')[0].lower()} curves")
        ax.grid(alpha=0.3)
        ax.legend()
        paths.append(_save(fig, Path(run_dir) / ("loss.png" if key == "loss" else "accuracy.png")))
        plt.close(fig)
    return paths + plot_gradflow(run_dir)


def plot_gradflow(run_dir: Path) -> list[Path]:
    """``gradflow.png`` (log10 gradient norm, layers x time) and ``gradflow_ratio.png``
    (first-layer / last-layer norm over time), from ``gradflow.csv``."""
    import numpy as np

    from archbench.train import gradflow

    data = gradflow.read(run_dir)
    if data is None:
        return []
    plt = _pyplot()
    names, rows = data
    arr = np.array(rows)
    t, norms = arr[:, 1], np.maximum(arr[:, 2:], 1e-12)
    label = run_label(run_dir)
    fig, ax = plt.subplots(figsize=(9, max(3.0, 0.12 * len(names) + 1.5)))
    im = ax.imshow(np.log10(norms.T), aspect="auto", origin="upper", cmap="viridis",
                   extent=(0, t[-1], len(names) - 0.5, -0.5))
    ax.set(xlabel="Epoch", ylabel="Layer (input at top)", title=f"{label}: per-layer gradient L2 norm (log10)")
    step = max(1, len(names) // 12)
    ax.set_yticks(range(0, len(names), step), [names[i] for i in range(0, len(names), step)], fontsize=6)
    fig.colorbar(im, ax=ax, label="log10 ‖grad‖")
    paths = [_save(fig, Path(run_dir) / "gradflow.png")]
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.semilogy(t, norms[:, 0] / norms[:, -1], marker="o" if len(t) <= 40 else None, ms=3)
    ax.set(xlabel="Epoch", ylabel=f"‖grad {names[0]}‖ / ‖grad {names[-1]}‖",
           title=f"{label}: first-layer / last-layer gradient norm")
    ax.grid(alpha=0.3, which="both")
    paths.append(_save(fig, Path(run_dir) / "gradflow_ratio.png"))
    plt.close(fig)
    return paths


def plot_overlay(run_dirs: list[Path], out_dir: Path) -> list[Path]:
    """``overlay_loss.png`` and ``overlay_accuracy.png``: all runs on shared axes, one colour per model."""
    plt = _pyplot()
    runs = [(run_label(d), history.read(d)) for d in run_dirs]
    models = list(dict.fromkeys(label for label, _ in runs))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    paths = []
    for key, ylabel in METRICS:
        fig, ax = plt.subplots(figsize=(8, 5))
        labelled = set()
        for label, records in runs:
            # Seeds of one model share its colour and its legend entry.
            _draw(ax, records, key, label if label not in labelled else None,
                  colors[models.index(label) % len(colors)])
            labelled.add(label)
        ax.set(xlabel="Epoch", ylabel=ylabel, title=f"{' vs '.join(models)} (train dashed, val solid)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        paths.append(_save(fig, Path(out_dir) / f"overlay_{'loss' if key == 'loss' else 'accuracy'}.png"))
        plt.close(fig)
    return paths
