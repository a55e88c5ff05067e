"""Landscapes of several runs: measured one after another, compared on one scale.

``measure_runs`` is what ``archbench landscape`` and ``compare --landscape`` do: each run's
landscape (``landscape.measure_run``), the line between two seeds of each model, and the
overlay figures. ``report_blocks`` is the report's "Landscape" section, built from the
files alone.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from archbench.analysis import landscape as ls
from archbench.analysis import landscape_plots as lp
from archbench.analysis.stats import summary
from archbench.errors import ArchbenchError
from archbench.io_utils import atomic_write_text, atomic_write_with, check_writable, make_dirs, read_json

SEEDS_NPZ, SEEDS_JSON = "interp_seeds.npz", "interp_seeds.json"
SeedLines = dict[str, tuple[int, int, dict[str, np.ndarray]]]  # model -> (seed A, seed B, alpha/loss/acc)


def overlay_dir(run_dirs: list[Path]) -> Path:
    """Where figures across runs go by default: ``landscape/`` in the runs' common folder."""
    return Path(os.path.commonpath([Path(d).resolve() for d in run_dirs])) / ls.FOLDER


def measure_runs(
    run_dirs: list[Path],
    s: ls.Settings,
    probe_data: Callable,
    device: torch.device,
    out_dir: Path,
    log: Callable[[str], None],
    bar,
) -> list[Path]:
    """Every run's landscape, then the lines between seeds and the overlays; returns the figures."""
    for d in run_dirs:  # before minutes of measuring, not after
        check_writable(ls.folder_of(d) / ls.JSON)
    if len(run_dirs) > 1:
        check_writable(out_dir / SEEDS_JSON)
    infos, figures = [], []
    for d in run_dirs:
        info, arrays = ls.measure_run(Path(d), s, probe_data, device, log, bar)
        figures += lp.draw_run(ls.folder_of(d), ls.run_label(info), arrays)
        log(f"[{info['model']}] landscape in {ls.folder_of(d)}: {summary_line(info)}")
        infos.append(info)
    if len(run_dirs) < 2:
        return figures
    make_dirs(out_dir)
    lines = {}
    if "interp" in s.kinds:
        for a, b in ls.seed_pairs(infos):
            line = ls.between_seeds(run_dirs[a], run_dirs[b], s, probe_data, device, out_dir, log, bar)
            lines[infos[a]["model"]] = (infos[a]["seed"], infos[b]["seed"], line)
    if lines:
        figures.append(write_seed_lines(out_dir, lines))
    per_run = {ls.run_label(i): ls.read_results(d)[1] for i, d in zip(infos, run_dirs)}
    figures += lp.draw_overlays(per_run, out_dir)
    return figures


def write_seed_lines(out_dir: Path, lines: SeedLines) -> Path:
    """The seed-to-seed lines: numbers to interp_seeds.npz/.json, the figure to interp_seeds.png."""
    arrays, info = {}, {}
    for model, (sa, sb, line) in lines.items():
        for k, v in line.items():
            arrays[f"{model}__{k}"] = v
        info[model] = {"seeds": [sa, sb], "barrier": ls.barrier(line["alpha"], line["loss"])}
    atomic_write_with(out_dir / SEEDS_NPZ, lambda f: np.savez(f, **arrays))
    atomic_write_text(out_dir / SEEDS_JSON, json.dumps(info, indent=2) + "\n")
    return draw_seed_lines(out_dir, lines)


def draw_seed_lines(out_dir: Path, lines: SeedLines) -> Path:
    curves = {f"{m} seeds {sa}→{sb}": (ln["alpha"], ln["loss"], ln["acc"]) for m, (sa, sb, ln) in lines.items()}
    return lp.plot_curves(curves, out_dir / "interp_seeds.png", "α: seed A (0) → seed B (1) weights", (0.0, 1.0))


def read_seed_lines(folder: Path) -> SeedLines | None:
    """The lines written by ``write_seed_lines`` (None if there are none)."""
    if not (folder / SEEDS_JSON).is_file():
        return None
    fix = "run archbench landscape on the runs again"
    info = read_json(folder / SEEDS_JSON, "seed-to-seed interpolation", fix)
    try:
        with np.load(folder / SEEDS_NPZ) as f:
            return {
                m: (int(v["seeds"][0]), int(v["seeds"][1]), {k: f[f"{m}__{k}"] for k in ("alpha", "loss", "acc")})
                for m, v in info.items()
            }
    except (OSError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise ArchbenchError(f"{folder / SEEDS_NPZ} does not match {folder / SEEDS_JSON} ({e}); {fix}") from e


def depth_lines(by_model: dict[str, list[dict]]) -> list[str]:
    """How much sharper each plain net is than its resnet, depth by depth (geometric means over seeds)."""
    out, gaps = [], []
    for model in by_model:
        if not model.startswith("resnet") or f"plain{model[6:]}" not in by_model:
            continue
        twin = f"plain{model[6:]}"
        parts = []
        for key, what in (("lambda_max", "λmax"), ("trace", "trace")):
            ratio = _geo_mean(by_model[twin], key) / _geo_mean(by_model[model], key)
            if np.isfinite(ratio):
                parts.append(f"{what} {ratio:.3g}×")
                if key == "lambda_max" and model[6:].isdigit():
                    gaps.append((int(model[6:]), ratio))
        if parts:
            out.append(f"depth {model[6:]}: {twin} vs {model}: " + ", ".join(parts))
    if len(gaps) > 1:
        (d1, r1), (d2, r2) = sorted(gaps)[0], sorted(gaps)[-1]
        trend = "grows" if r2 > r1 else "shrinks" if r2 < r1 else "stays"
        out.append(
            f"The plain net's excess sharpness {trend} with depth (λmax {r1:.3g}× at {d1} layers, {r2:.3g}× at "
            f"{d2}); PyHessian (Yao et al. 2020) found the residual smoothing only at depth."
        )
    return out


def _geo_mean(infos: list[dict], key: str) -> float:
    values = [i["hessian"][key] for i in infos if i.get("hessian")]
    return float(np.exp(np.mean(np.log(values)))) if values and min(values) > 0 else float("nan")


def summary_line(info: dict) -> str:
    parts = []
    sm = info.get("summary", {})
    if "center_loss" in sm:
        parts.append(f"loss {sm['center_loss']:.4g} at the weights")
    if "rise_1d_span" in sm:
        parts.append(f"+{sm['rise_1d_span']:.3g} at ±span")
    h = info.get("hessian")
    if h:
        parts.append(f"λmax {h['lambda_max']:.4g}, trace {h['trace']:.4g} ± {h['trace_se']:.2g}")
    if "interp_barrier" in sm:
        parts.append(f"init→trained barrier {sm['interp_barrier']:.3g}")
    return "; ".join(parts) or "measured"


# ---------------------------------------------------------------- the report's section


def _cell(values: list[float], fmt: str = ".4g") -> str:
    if not values:
        return "—"
    s = summary(values)
    return f"{s.mean:{fmt}}" + ("" if s.std is None else f" ± {s.std:{fmt}}")


def curvature_rows(by_model: dict[str, list[dict]]) -> list[list[str]]:
    """One row per model: mean ± sd across seeds of each curvature and sharpness figure."""
    rows = []
    for model, infos in by_model.items():
        hs = [i["hessian"] for i in infos if i.get("hessian")]
        sm = [i.get("summary", {}) for i in infos]
        rows.append(
            [
                model,
                str(len(infos)),
                _cell([h["lambda_max"] for h in hs]),
                _cell([h["trace"] for h in hs]),
                _cell([h["trace_se"] for h in hs], ".2g"),
                _cell([x["rise_1d_span"] for x in sm if "rise_1d_span" in x]),
                _cell([x["nonconvex_fraction_2d"] for x in sm if "nonconvex_fraction_2d" in x], ".2f"),
                _cell([x["interp_barrier"] for x in sm if "interp_barrier" in x]),
            ]
        )
    return rows


CURVATURE_HEAD = [
    "Model",
    "Seeds",
    "λmax",
    "Hessian trace",
    "trace s.e. (Hutchinson)",
    "loss rise at ±span (1-D)",
    "non-convex share (2-D)",
    "init→trained barrier",
]


def settings_differ(infos: list[dict]) -> str | None:
    """The first setting in which the runs' landscapes differ (None: comparable)."""
    first = infos[0]
    for i in infos[1:]:
        for k in ("settings", "images", "weights"):
            if i.get(k) != first.get(k):
                return f"{k}: {first.get(k)} ({run_of(first)}) vs {i.get(k)} ({run_of(i)})"
    return None


def run_of(info: dict) -> str:
    return ls.run_label(info)
