"""Figures of loss landscapes, drawn from ``landscape.npz`` files alone.

Per run: the 2-D surface as log-scale contours, the 1-D slice, the interpolation from
the initial weights. Across runs: the same on one shared scale (one panel per model for
the surfaces, one axes for the curves), so that a flatter basin looks flatter.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from archbench.analysis.plots import _colors, _pyplot, _save

CONTOUR_LEVELS = 20


def _log_levels(surfaces: list[np.ndarray]) -> np.ndarray:
    """Log-spaced contour levels spanning every surface: one scale for all panels."""
    finite = np.concatenate([s[np.isfinite(s)].ravel() for s in surfaces])
    lo, hi = max(float(finite.min()), 1e-6), max(float(finite.max()), 2e-6)
    return np.geomspace(lo, hi * (1 + 1e-9), CONTOUR_LEVELS)


def _contour(ax, t: np.ndarray, surface: np.ndarray, levels: np.ndarray, title: str):
    from matplotlib.colors import LogNorm

    z = np.where(np.isfinite(surface), surface, levels[-1])
    filled = ax.contourf(t, t, np.clip(z, levels[0], levels[-1]), levels=levels, norm=LogNorm(), cmap="viridis")
    ax.contour(t, t, np.clip(z, levels[0], levels[-1]), levels=levels, colors="k", linewidths=0.3, alpha=0.5)
    ax.plot([0], [0], marker="*", color="w", markersize=9, markeredgecolor="k")
    ax.set_aspect("equal")
    ax.set_title(title)
    ax.set_xlabel("direction 1")
    ax.set_ylabel("direction 2")
    return filled


def plot_surfaces(panels: dict[str, tuple[np.ndarray, np.ndarray]], path: Path) -> Path:
    """One panel per label: (axis, 2-D loss surface), on shared log-scale levels."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    plt = _pyplot()
    levels = _log_levels([z for _, z in panels.values()])
    fig, axes = plt.subplots(
        1, len(panels), figsize=(4.2 * len(panels) + 1.2, 4.2), squeeze=False, layout="constrained"
    )
    filled = None
    for i, (ax, (label, (t, z))) in enumerate(zip(axes[0], panels.items())):
        filled = _contour(ax, t, z, levels, label)
        if i:
            ax.set_ylabel("")
    bar = fig.colorbar(filled, ax=list(axes[0]), shrink=0.85)
    bar.set_label("training loss (log scale)")
    bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
    bar.ax.yaxis.set_minor_formatter(NullFormatter())
    return _save(fig, path)


def _curves(ax_loss, ax_acc, x: np.ndarray, loss: np.ndarray, acc: np.ndarray, label: str, color) -> None:
    ax_loss.plot(x, loss, "-", color=color, label=label)
    ax_acc.plot(x, acc, "-", color=color, label=label)


def plot_curves(
    curves: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    path: Path,
    xlabel: str,
    marks: tuple[float, ...] = (0.0,),
) -> Path:
    """Loss (log scale) and accuracy along a line, one curve per label: (x, loss, acc)."""
    plt = _pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for color, (label, (x, loss, acc)) in zip(_colors(len(curves)), curves.items()):
        _curves(ax_loss, ax_acc, x, loss, acc, label, color)
    ax_loss.set_yscale("log")
    ax_loss.set_ylabel("training loss (log scale)")
    ax_acc.set_ylabel("training accuracy (%)")
    for ax in (ax_loss, ax_acc):
        ax.set_xlabel(xlabel)
        for m in marks:
            ax.axvline(m, color="0.6", linewidth=0.8, linestyle=":")
        ax.grid(alpha=0.3)
    ax_loss.legend(fontsize=8)
    return _save(fig, path)


def plot_density(densities: dict[str, tuple[np.ndarray, np.ndarray]], path: Path) -> Path:
    """Hessian eigenvalue densities (log scale), one curve per label: (grid, density)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for color, (label, (grid, dens)) in zip(_colors(len(densities)), densities.items()):
        ax.semilogy(grid, np.maximum(dens, 1e-12), color=color, label=label)
    ax.set_xlabel("Hessian eigenvalue")
    ax.set_ylabel("density (log scale)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def density_curve(nodes: np.ndarray, weights: np.ndarray, points: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """The density broadened by Gaussians 1% of the Ritz values' range wide, on a grid spanning them."""
    from archbench.analysis.curvature import Density

    lo, hi = float(nodes.min()), float(nodes.max())
    width = max(hi - lo, 1e-6)
    grid = np.linspace(lo - 0.05 * width, hi + 0.05 * width, points)
    return grid, Density(nodes, weights).smoothed(grid, 0.01 * width)


def draw_run(folder: Path, label: str, arrays: dict[str, np.ndarray]) -> list[Path]:
    """The per-run figures ``arrays`` (one landscape.npz) allow, into ``folder``."""
    out = []
    if "loss_2d" in arrays:
        out.append(plot_surfaces({label: (arrays["axis"], arrays["loss_2d"])}, folder / "landscape_2d.png"))
    if "loss_1d" in arrays:
        out.append(
            plot_curves(
                {label: (arrays["axis"], arrays["loss_1d"], arrays["acc_1d"])},
                folder / "landscape_1d.png",
                "step along direction 1 (filter-normalized)",
            )
        )
    if "interp_loss" in arrays:
        out.append(
            plot_curves(
                {label: (arrays["interp_alpha"], arrays["interp_loss"], arrays["interp_acc"])},
                folder / "interp.png",
                "α: (1 − α)·initial + α·trained weights",
                (0.0, 1.0),
            )
        )
    if "density_nodes" in arrays:
        out.append(
            plot_density(
                {label: density_curve(arrays["density_nodes"], arrays["density_weights"])}, folder / "density.png"
            )
        )
    return out


def draw_overlays(runs: dict[str, dict[str, np.ndarray]], out_dir: Path) -> list[Path]:
    """Figures across runs (label -> landscape.npz arrays), each on one shared scale."""
    out = []
    with_2d = {k: (a["axis"], a["loss_2d"]) for k, a in runs.items() if "loss_2d" in a}
    if with_2d:
        out.append(plot_surfaces(with_2d, out_dir / "landscape_2d_shared.png"))
    with_1d = {k: (a["axis"], a["loss_1d"], a["acc_1d"]) for k, a in runs.items() if "loss_1d" in a}
    if with_1d:
        out.append(plot_curves(with_1d, out_dir / "landscape_1d_overlay.png", "step along direction 1"))
    with_interp = {
        k: (a["interp_alpha"], a["interp_loss"], a["interp_acc"]) for k, a in runs.items() if "interp_loss" in a
    }
    if with_interp:
        out.append(
            plot_curves(with_interp, out_dir / "interp_overlay.png", "α: initial (0) → trained (1) weights", (0.0, 1.0))
        )
    return out
