"""The geometry around a trained run's weights: loss surfaces, interpolations and curvature.

For one run folder this measures, on a fixed subset of its training images (``probe``):
  - ``1d``/``2d``: training loss and accuracy along one, and over a plane of two,
    filter-normalized random directions (``directions``) around the weights;
  - ``interp``: along the straight line from the run's initial weights (rebuilt from its
    seed exactly as training built them) to the weights (Goodfellow et al. 2015);
  - ``hessian``: the top Hessian eigenvalues (Lanczos), the trace (Hutchinson, with its
    standard error) and optionally the eigenvalue density (``curvature``).
Results land in ``RUN_DIR/landscape/``: ``landscape.npz`` (every grid and the settings),
``landscape.json`` (the numbers a report needs) and figures. The grids are saved to
``landscape.partial.npz`` as they fill, so a killed run continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from archbench.analysis.directions import blend, directions, move_to, state_of, weights_of
from archbench.analysis.probe import Probe
from archbench.config import Config, read_json
from archbench.data import fingerprint
from archbench.data.datasets import get as get_dataset
from archbench.data.sources import CifarData
from archbench.errors import ArchbenchError
from archbench.io_utils import atomic_write_text, atomic_write_with, make_dirs
from archbench.train import checkpoint
from archbench.train.model_record import refuse_changed_model_of
from archbench.train.runner import CONFIG_NAME, hold_out_validation, take_subsets
from archbench.train.training import build_model

KINDS = ("1d", "2d", "interp", "hessian")
WEIGHTS = ("final", "best", "last")
FOLDER = "landscape"
NPZ, JSON, PARTIAL = "landscape.npz", "landscape.json", "landscape.partial.npz"
FORMAT = 1
# Interpolation runs a quarter of the way past each end, to show the walls beyond them.
INTERP_RANGE = (-0.25, 1.25)
SAVE_EVERY_S = 10.0  # a killed grid loses at most this much work
EVAL_BATCH = 500  # images per forward pass: memory only, the loss is the same


@dataclass(frozen=True)
class Settings:
    """How a landscape is measured; ``None`` fields take the device's defaults (``resolve``)."""

    kinds: tuple[str, ...] = KINDS
    weights: str = "final"  # final: the weights the verdicts judge; best / last: that checkpoint
    resolution: int | None = None  # points per axis (odd, so the weights themselves are a point)
    span: float = 1.0  # the grid covers [-span, span] along each direction (1: a whole filter's norm)
    images: int | None = None  # training images the loss is taken on
    seed: int = 0  # directions and curvature probes
    eigenvalues: int | None = None  # top-k Hessian eigenvalues
    trace_samples: int | None = None  # Hutchinson probes
    density: bool = False  # also the eigenvalue density (stochastic Lanczos quadrature)

    def record(self) -> dict:
        return {**dataclasses.asdict(self), "kinds": list(self.kinds)}


# A GPU measures the paper-scale grid; a CPU a sketch of it in about a minute per resnet18 run
# (there a Hessian-vector product costs some 20 forward passes).
DEFAULTS = {
    "cuda": {"resolution": 21, "images": 2500, "eigenvalues": 5, "trace_samples": 30},
    "other": {"resolution": 5, "images": 30, "eigenvalues": 1, "trace_samples": 4},
}
DENSITY_STEPS, DENSITY_PROBES = 40, 2  # Lanczos steps and probes of the eigenvalue density


def resolve(s: Settings, device: torch.device, num_classes: int = 10) -> Settings:
    """Fill the device's defaults and check every value, naming the flag of a bad one. The images
    are class-balanced, so there are at least as many as the runs' dataset has classes."""
    d = {**DEFAULTS["cuda" if device.type == "cuda" else "other"]}
    d["images"] = max(d["images"], num_classes)
    s = dataclasses.replace(s, **{k: v for k, v in d.items() if getattr(s, k) is None})
    bad = [k for k in s.kinds if k not in KINDS]
    if bad or not s.kinds:
        raise ArchbenchError(f"--kind {','.join(s.kinds)}: choose from {', '.join(KINDS)} or all")
    checks = [
        (s.weights in WEIGHTS, "--weights", f"one of {', '.join(WEIGHTS)}", s.weights),
        (s.resolution >= 3 and s.resolution % 2 == 1, "--resolution", "an odd number ≥ 3", s.resolution),
        (math.isfinite(s.span) and s.span > 0, "--span", "a positive number", s.span),
        (s.images >= num_classes, "--images", f"at least {num_classes} (one per class)", s.images),
        (s.seed >= 0, "--directions-seed", "≥ 0", s.seed),
        (s.eigenvalues >= 1, "--eigenvalues", "≥ 1", s.eigenvalues),
        (s.trace_samples >= 2, "--trace-samples", "≥ 2 (the standard error needs two)", s.trace_samples),
    ]
    for ok, flag, allowed, value in checks:
        if not ok:
            raise ArchbenchError(f"{flag} {value}: must be {allowed}")
    return s


# ---------------------------------------------------------------- the run's weights and data


@dataclass
class Subject:
    """A run folder's model at the chosen weights, and what it was trained from."""

    run_dir: Path
    cfg: Config
    model: torch.nn.Module
    weights: str  # "best" or "last": the checkpoint read
    epoch: int
    digest: str  # of the weights: a landscape of other weights is never reused


def judged_checkpoint(cfg: Config, weights: str) -> str:
    """The checkpoint of ``--weights``: "final" is what the verdicts judge (``Result.final``)."""
    if weights == "final":
        return checkpoint.BEST if cfg.val_split else checkpoint.LAST
    return checkpoint.BEST if weights == "best" else checkpoint.LAST


def load_subject(run_dir: Path, weights: str, device: torch.device) -> Subject:
    cfg = read_json(run_dir / CONFIG_NAME)
    path = run_dir / judged_checkpoint(cfg, weights)
    if not path.is_file():
        raise ArchbenchError(f"{path} not found: {run_dir} has no trained weights; train the run first")
    ckpt = checkpoint.load(path, "cpu")
    if ckpt["model_name"] != cfg.model:
        raise ArchbenchError(
            f"{path} holds {ckpt['model_name']!r} weights but {run_dir / CONFIG_NAME} is of {cfg.model!r}; "
            f"the folder mixes two runs — train it again"
        )
    refuse_changed_model_of(run_dir, cfg)
    model = build_model(cfg.replace(device=str(device)), device)
    checkpoint.load_weights(model, ckpt["model"], path, cfg.model)
    return Subject(run_dir, cfg, model.eval(), path.stem, int(ckpt["epoch"]), digest(model))


def initial_state(cfg: Config, device: torch.device) -> dict[str, torch.Tensor]:
    """The run's weights before its first step: the model built from its seed, as training does."""
    return state_of(build_model(cfg, device))


def digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, value in model.state_dict().items():
        h.update(name.encode())
        h.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------- grids that survive a kill


class Grids:
    """Named loss/accuracy grids filled point by point, saved now and then to a partial file.

    A grid is resumed only by the same settings on the same weights (``key``); otherwise it
    starts again.
    """

    def __init__(self, path: Path, key: str, log: Callable[[str], None]):
        self.path, self.key, self.arrays = path, key, {}
        self._saved_at = time.monotonic()
        if self.path.is_file():
            try:
                with np.load(self.path) as f:
                    same = str(f["key"]) == key
                    self.arrays = {k: f[k] for k in f.files if k != "key"} if same else {}
            except Exception as e:  # a torn or foreign file: its points are measured again
                log(f"{self.path} is unreadable ({type(e).__name__}); measuring its points again")
                same = False
            if same:
                done = sum(int((~np.isnan(v)).sum()) for k, v in self.arrays.items() if k.startswith("loss_"))
                log(f"continuing from {self.path}: {done} points already measured")

    def fill(
        self,
        name: str,
        shape: tuple[int, ...],
        measure: Callable[[tuple[int, ...]], tuple[float, float]],
        bar: Callable[[Iterator, int, str], Iterator],
    ) -> tuple[np.ndarray, np.ndarray]:
        """Measure every point of grid ``name`` not yet measured; returns (loss, acc)."""
        loss = self.arrays.setdefault(f"loss_{name}", np.full(shape, np.nan))
        acc = self.arrays.setdefault(f"acc_{name}", np.full(shape, np.nan))
        todo = [i for i in np.ndindex(*shape) if np.isnan(loss[i])]  # NaN: not measured yet
        for i in bar(iter(todo), len(todo), name):
            loss[i], acc[i] = measure(i)
            if not np.isfinite(loss[i]):  # a blown-up loss is stored as inf: measured, never retried
                loss[i] = np.inf
            if time.monotonic() - self._saved_at > SAVE_EVERY_S:
                self.save()
        self.save()
        return loss, acc

    def save(self) -> None:
        atomic_write_with(self.path, lambda f: np.savez(f, key=np.array(self.key), **self.arrays))
        self._saved_at = time.monotonic()

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


# ---------------------------------------------------------------- measuring


def axis(s: Settings) -> np.ndarray:
    return np.linspace(-s.span, s.span, s.resolution)


def interp_axis(s: Settings) -> np.ndarray:
    """Alphas from ``INTERP_RANGE`` that hit 0 and 1 exactly."""
    lo, hi = INTERP_RANGE
    step = 1.0 / (s.resolution - 1)
    return np.round(np.arange(round(lo / step), round(hi / step) + 1) * step, 12)


def surfaces(subject: Subject, probe: Probe, s: Settings, grids: Grids, bar) -> dict[str, np.ndarray]:
    """The 1-D and 2-D grids asked for, around the subject's weights."""
    origin = weights_of(subject.model)
    d1, d2 = directions(origin, 2, s.seed)
    t = axis(s)
    out: dict[str, np.ndarray] = {"axis": t}
    try:
        if "1d" in s.kinds:

            def at_1d(i):
                move_to(subject.model, origin, [(t[i[0]], d1)])
                return probe.measure()

            out["loss_1d"], out["acc_1d"] = grids.fill("1d", (len(t),), at_1d, bar)
        if "2d" in s.kinds:

            def at_2d(i):
                move_to(subject.model, origin, [(t[i[1]], d1), (t[i[0]], d2)])  # rows: d2, columns: d1
                return probe.measure()

            out["loss_2d"], out["acc_2d"] = grids.fill("2d", (len(t), len(t)), at_2d, bar)
    finally:
        move_to(subject.model, origin, [])
    return out


def interpolation(
    subject: Subject, probe: Probe, start: dict[str, torch.Tensor], s: Settings, grids: Grids, bar, name: str
) -> dict[str, np.ndarray]:
    """Loss along ``(1 − α) · start + α · weights`` (α = 0: ``start``; α = 1: the weights)."""
    end = state_of(subject.model)
    alphas = interp_axis(s)

    def at(i):
        blend(subject.model, start, end, float(alphas[i[0]]))
        return probe.measure()

    try:
        loss, acc = grids.fill(name, (len(alphas),), at, bar)
    finally:
        subject.model.load_state_dict(end)
    return {"alpha": alphas, "loss": loss, "acc": acc}


def hessian(subject: Subject, probe: Probe, s: Settings, log) -> tuple[dict, dict[str, np.ndarray]]:
    """Curvature at the weights: (numbers for landscape.json, arrays for landscape.npz)."""
    from archbench.analysis import curvature  # scipy's sparse solvers load only when curvature is asked for

    params = {k: v.detach() for k, v in subject.model.named_parameters()}
    h = curvature.Hessian(params, probe.terms())
    started = time.perf_counter()
    k = min(s.eigenvalues, h.n - 1)
    top = curvature.top_eigenvalues(h, k, s.seed)
    eig_s, eig_mv = time.perf_counter() - started, h.matvecs
    trace = curvature.hutchinson_trace(h, s.trace_samples, s.seed)
    numbers = {
        "eigenvalues": [float(v) for v in top],
        "lambda_max": float(top[0]),
        "trace": trace.mean,
        "trace_se": trace.se,
        "trace_samples": trace.samples,
        "hvps": {"eigenvalues": eig_mv, "trace": h.matvecs - eig_mv},
        "seconds": {"eigenvalues": eig_s, "trace": time.perf_counter() - started - eig_s},
    }
    arrays = {"eigenvalues": top}
    which = "λ1" if k == 1 else f"λ1..λ{k}"
    log(
        f"[{subject.cfg.model}] Hessian: {which} = {', '.join(f'{v:.4g}' for v in top)} ({eig_mv} HVPs, "
        f"{eig_s:.1f} s); trace = {trace.mean:.4g} ± {trace.se:.2g} ({trace.samples} probes)"
    )
    if s.density:
        dens = curvature.eigenvalue_density(h, DENSITY_STEPS, DENSITY_PROBES, s.seed)
        arrays.update(density_nodes=dens.nodes, density_weights=dens.weights)
    return numbers, arrays


# ---------------------------------------------------------------- summaries


def summarize(arrays: dict[str, np.ndarray], s: Settings) -> dict:
    """Sharpness read off the grids: how far the loss rises within the span."""
    out: dict = {}
    mid = s.resolution // 2
    if "loss_1d" in arrays:
        l1 = arrays["loss_1d"]
        out["center_loss"], out["center_acc"] = float(l1[mid]), float(arrays["acc_1d"][mid])
        half = (mid // 2, mid + (mid + 1) // 2)  # the points at about ±span/2
        out["rise_1d_half_span"] = float(np.mean([l1[i] for i in half]) - l1[mid])
        out["rise_1d_span"] = float((l1[0] + l1[-1]) / 2 - l1[mid])
    if "loss_2d" in arrays:
        l2 = arrays["loss_2d"]
        out.setdefault("center_loss", float(l2[mid, mid]))
        out.setdefault("center_acc", float(arrays["acc_2d"][mid, mid]))
        out["rise_2d_max"] = float(np.max(l2[np.isfinite(l2)]) - l2[mid, mid])
        out["nonconvex_fraction_2d"] = nonconvex_fraction(l2)
    if "interp_loss" in arrays:
        loss, alpha = arrays["interp_loss"], arrays["interp_alpha"]
        out["interp_initial_loss"], out["interp_final_loss"] = float(loss[alpha == 0][0]), float(loss[alpha == 1][0])
        out["interp_barrier"] = barrier(alpha, loss)
    return out


def barrier(alpha: np.ndarray, loss: np.ndarray) -> float:
    """How far the loss between α = 0 and 1 rises above the straight line between its ends."""
    inside = (alpha >= 0) & (alpha <= 1)
    ends = np.interp(alpha, [0.0, 1.0], [loss[alpha == 0][0], loss[alpha == 1][0]])
    return float(np.max(loss[inside] - ends[inside]))


def nonconvex_fraction(surface: np.ndarray) -> float:
    """Share of interior points where the surface's 2x2 finite-difference Hessian has a
    negative eigenvalue of at least 1% of its largest magnitude (Li et al. map |λmin/λmax|)."""
    z = np.log(np.clip(surface, 1e-12, None))
    zxx = z[1:-1, 2:] - 2 * z[1:-1, 1:-1] + z[1:-1, :-2]
    zyy = z[2:, 1:-1] - 2 * z[1:-1, 1:-1] + z[:-2, 1:-1]
    zxy = (z[2:, 2:] - z[2:, :-2] - z[:-2, 2:] + z[:-2, :-2]) / 4
    root = np.sqrt(((zxx - zyy) / 2) ** 2 + zxy**2)
    lo, hi = (zxx + zyy) / 2 - root, (zxx + zyy) / 2 + root
    scale = np.maximum(np.abs(lo), np.abs(hi))
    ok = np.isfinite(lo) & np.isfinite(hi) & (scale > 0)
    return float(np.mean(lo[ok] < -0.01 * scale[ok])) if ok.any() else float("nan")


# ---------------------------------------------------------------- one run, end to end


def folder_of(run_dir: Path) -> Path:
    return Path(run_dir) / FOLDER


def read_results(run_dir: Path) -> tuple[dict, dict[str, np.ndarray]] | None:
    """(landscape.json, landscape.npz arrays) of a run, None if it has no landscape."""
    folder = folder_of(run_dir)
    if not (folder / JSON).is_file():
        return None
    from archbench.io_utils import read_json as read_json_file

    fix = "run archbench landscape on the run again"
    info = read_json_file(folder / JSON, "landscape summary", fix)
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise ArchbenchError(f"{folder / JSON} is not an archbench landscape summary of format {FORMAT}; {fix}")
    try:
        with np.load(folder / NPZ) as f:
            arrays = {k: f[k] for k in f.files}
    except FileNotFoundError as e:
        raise ArchbenchError(f"{folder / NPZ} is missing beside {folder / JSON}; {fix}") from e
    except Exception as e:
        raise ArchbenchError(f"{folder / NPZ} is unreadable ({type(e).__name__}); {fix}") from e
    return info, arrays


def measure_run(
    run_dir: Path,
    s: Settings,
    probe_data: Callable[[Path, Config], tuple[np.ndarray, np.ndarray]],
    device: torch.device,
    log: Callable[[str], None],
    bar,
) -> tuple[dict, dict[str, np.ndarray]]:
    """Measure one run (or reuse its finished landscape of the same settings and weights)."""
    subject = load_subject(Path(run_dir), s.weights, device)
    folder = folder_of(run_dir)
    key = json.dumps({"settings": s.record(), "weights": subject.digest, "device": device.type}, sort_keys=True)
    done = read_results(run_dir) if (folder / JSON).is_file() else None
    if done is not None and done[0].get("key") == key:
        log(f"[{subject.cfg.model}] landscape of the same settings and weights found in {folder}; reusing it")
        return done
    make_dirs(folder)
    x, y = probe_data(subject.run_dir, subject.cfg)
    probe = Probe(subject.model, x, y, s.images, device, EVAL_BATCH, get_dataset(subject.cfg.dataset))
    grids = Grids(folder / PARTIAL, key, log)
    started = time.perf_counter()
    arrays = surfaces(subject, probe, s, grids, bar)
    seconds = {"surfaces": time.perf_counter() - started}
    if "interp" in s.kinds:
        started = time.perf_counter()
        line = interpolation(subject, probe, initial_state(subject.cfg, device), s, grids, bar, "interp")
        arrays.update(interp_alpha=line["alpha"], interp_loss=line["loss"], interp_acc=line["acc"])
        seconds["interp"] = time.perf_counter() - started
    info = {
        "format": FORMAT,
        "key": key,
        "model": subject.cfg.model,
        "seed": subject.cfg.seed,
        "weights": subject.weights,
        "epoch": subject.epoch,
        "weights_digest": subject.digest,
        "images": probe.images,
        "settings": s.record(),
        "device": str(device),
        "torch": torch.__version__,
        "seconds": seconds,
    }
    if "hessian" in s.kinds:
        numbers, hess = hessian(subject, probe, s, log)
        info["hessian"] = numbers
        arrays.update(hess)
    info["summary"] = summarize(arrays, s)
    arrays["settings"] = np.array(json.dumps(s.record()))
    atomic_write_with(folder / NPZ, lambda f: np.savez(f, **arrays))
    atomic_write_text(folder / JSON, json.dumps(info, indent=2) + "\n")
    grids.discard()
    return info, arrays


# ---------------------------------------------------------------- several runs


def training_images(run_dir: Path, cfg: Config, full: CifarData) -> tuple[np.ndarray, np.ndarray]:
    """The images the run trained on (its subset, less its validation split), after checking
    that they are the ones its checkpoint recorded."""
    data = take_subsets(full, cfg.train_subset, cfg.test_subset)
    last = Path(run_dir) / checkpoint.LAST
    recorded = checkpoint.load(last, "cpu", mmap=True).get("data") if last.is_file() else None
    differ = [] if recorded is None else fingerprint.differences(recorded, fingerprint.fingerprint(data))
    if differ:
        raise ArchbenchError(
            f"{run_dir} was trained on other data ({' and '.join(differ)} differ): "
            f"{fingerprint.describe(recorded)} then, {fingerprint.describe(fingerprint.fingerprint(data))} now; "
            f"pass the run's data with --data-dir"
        )
    if cfg.val_split:
        data = hold_out_validation(data, cfg.val_split, cfg.seed)
    return data.x_train, data.y_train


def run_label(info: dict) -> str:
    return f"{info['model']} seed {info['seed']}"


def seed_pairs(infos: list[dict]) -> list[tuple[int, int]]:
    """For each model with two or more seeds, the indices of its two lowest seeds."""
    by_model: dict[str, list[int]] = {}
    for i, info in enumerate(infos):
        by_model.setdefault(info["model"], []).append(i)
    pairs = []
    for idx in by_model.values():
        if len(idx) > 1:
            a, b = sorted(idx, key=lambda i: infos[i]["seed"])[:2]
            pairs.append((a, b))
    return pairs


def between_seeds(
    run_a: Path, run_b: Path, s: Settings, probe_data, device: torch.device, out_dir: Path, log, bar
) -> dict[str, np.ndarray]:
    """Loss along the line from seed A's weights (α = 0) to seed B's (α = 1) of one model."""
    a = load_subject(run_a, s.weights, device)
    b = load_subject(run_b, s.weights, device)
    x, y = probe_data(b.run_dir, b.cfg)
    probe = Probe(b.model, x, y, s.images, device, EVAL_BATCH, get_dataset(b.cfg.dataset))
    key = json.dumps({"settings": s.record(), "a": a.digest, "b": b.digest}, sort_keys=True)
    name = f"seeds_{b.cfg.model}"
    grids = Grids(out_dir / f"interp_{name}.partial.npz", key, log)
    line = interpolation(b, probe, state_of(a.model), s, grids, bar, name)
    grids.discard()
    return line
