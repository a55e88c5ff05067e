"""Figures, made from history files alone: per-run curves and overlays of several runs.

Train curves are dashed and validation curves solid, as in the study.
"""

from __future__ import annotations

from pathlib import Path

from archbench import history

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


def _draw(ax, records: list[dict], key: str, label: str, color=None) -> None:
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in records]
    marker = "o" if len(epochs) <= 20 else None  # a short run's points would vanish as bare lines
    ax.plot(epochs, [r[f"train_{key}"] for r in records], "--", marker=marker, ms=3, color=color,
            label=f"{label} train")
    ax.plot(epochs, [r[f"val_{key}"] for r in records], "-", marker=marker, ms=3, color=color,
            label=f"{label} val")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _save(fig, path: Path) -> Path:
    from archbench.io_utils import atomic_write_bytes
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    return path


def plot_run(run_dir: Path) -> list[Path]:
    """``loss.png`` and ``accuracy.png`` in the run folder."""
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
    return paths


def plot_overlay(run_dirs: list[Path], out_dir: Path) -> list[Path]:
    """``overlay_loss.png`` and ``overlay_accuracy.png``: all runs on shared axes."""
    plt = _pyplot()
    runs = [(run_label(d), history.read(d)) for d in run_dirs]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    paths = []
    for key, ylabel in METRICS:
        fig, ax = plt.subplots(figsize=(8, 5))
        for i, (label, records) in enumerate(runs):
            _draw(ax, records, key, label, colors[i % len(colors)])
        ax.set(xlabel="Epoch", ylabel=ylabel,
               title=f"{' vs '.join(l for l, _ in runs)} (train dashed, val solid)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        paths.append(_save(fig, Path(out_dir) / f"overlay_{'loss' if key == 'loss' else 'accuracy'}.png"))
        plt.close(fig)
    return paths
