"""``report.md`` and a self-contained ``report.html`` for a compare folder, answer first.

Everything comes from files in the folder: ``comparison.json`` (which runs, in which
order, and the environment), each listed run's ``config.json``, history, ``final.json``,
``predictions.npz``, ``divergence.json`` and ``gradflow.csv``, all read and checked by
``evidence.load`` before anything is written. Figures are drawn anew from those files. The
report is a list of blocks rendered twice: Markdown (images linked) and HTML (images
embedded, verdicts as coloured boxes).
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

import numpy as np

from archbench.analysis import landscape_plots, landscape_study, plots
from archbench.analysis import verdicts as verdict_rules
from archbench.analysis.classwise import calibration, confusion, per_class_accuracy
from archbench.analysis.compare import selection_note, table_markdown
from archbench.analysis.evidence import RunData, accuracy_evidence, accuracy_line, load
from archbench.analysis.metrics import METRIC_LABELS
from archbench.analysis.stats import summary
from archbench.data.datasets import DatasetInfo
from archbench.data.datasets import get as get_dataset
from archbench.io_utils import atomic_write_text

# The study's published single-run results (SPEC.md), on CIFAR-10: test accuracy (%) and test loss.
STUDY = {"resnet18": (94.99, 0.1937), "vgg19_bn": (92.87, 0.3345)}
STUDY_DATASET = "cifar10"
STUDY_EPOCHS = 100
NEAR_CHANCE_FACTOR = 2.0  # a final accuracy below twice chance (20% on CIFAR-10) has learned little
FULL_TEST_SET = 10_000
LABEL_COLORS = {
    verdict_rules.SUPPORTED: "#1b7f3b",
    verdict_rules.CONTRADICTED: "#b3261e",
    verdict_rules.NOT_SHOWN: "#8a6d00",
    verdict_rules.NOT_APPLICABLE: "#555555",
}

Block = tuple


def _mean(values) -> float:
    return float(np.mean([v for v in values if v is not None])) if any(v is not None for v in values) else math.nan


def dataset_of(runs: dict[str, list[RunData]]) -> DatasetInfo:
    """The dataset every compared run trained on (loading refuses folders that mix datasets)."""
    return get_dataset(next(iter(runs.values()))[0].cfg.dataset)


def warnings(runs: dict[str, list[RunData]]) -> list[str]:
    """The caveats a reader must see before any number."""
    out = []
    cfg = next(iter(runs.values()))[0].cfg
    chance_pp = 100.0 / dataset_of(runs).num_classes
    first_step = cfg.milestones[0] if cfg.milestones else None
    if first_step is None or cfg.epochs <= first_step:
        out.append(
            f"Smoke run: {cfg.epochs} epochs, ending before the first LR step"
            + (f" (after epoch {first_step})" if first_step else "")
            + ". These numbers do not answer the "
            "study's question; its protocol is 100 epochs with LR steps after epochs 50 and 75."
        )
    elif cfg.epochs != STUDY_EPOCHS:
        out.append(f"{cfg.epochs} epochs, not the study's {STUDY_EPOCHS}: the study's figures are not comparable.")
    for model, rs in runs.items():
        acc = _mean([r.result.final and r.result.final.acc for r in rs])
        if math.isfinite(acc) and acc < NEAR_CHANCE_FACTOR * chance_pp:
            out.append(
                f"{model}'s final accuracy ({acc:.1f}%) is near chance ({chance_pp:.0f}%): it has learned "
                f"little, and differences involving it say nothing about architectures."
            )
    images = next(iter(runs.values()))[0].result.images
    if images < FULL_TEST_SET:
        p = _mean([r.result.final and r.result.final.acc / 100 for rs in runs.values() for r in rs])
        p = 0.5 if not math.isfinite(p) else p
        sd = 100 * math.sqrt(p * (1 - p) / images)
        out.append(
            f"Small test set: {images:,} images, so one accuracy figure carries a binomial sd of about "
            f"{sd:.1f} pp (at {100 * p:.0f}%) from the choice of test images alone."
        )
    if cfg.val_split is None:
        out.append(
            "The best epoch was selected on the test set (the study's choice): 'Best Val' and the best "
            "weights' test accuracy are optimistic. Verdicts use the last epoch's weights instead."
        )
    if max(len(rs) for rs in runs.values()) < 2:
        out.append(
            "One seed per model: no interval can separate an architecture's effect from seed-to-seed "
            "variation, so no verdict can be 'supported' or 'contradicted' on accuracy. Use --seeds 0 1 2."
        )
    for model, rs in runs.items():
        for r in rs:
            if r.result.diverged:
                d = r.result.diverged
                where = f"epoch {d['epoch']}" + (f", step {d['step']}" if d.get("step") else "")
                out.append(
                    f"{model} seed {r.cfg.seed} diverged at {where}; it counts against {model} in H1 "
                    f"and, having no final weights, is left out of the accuracy comparisons."
                )
    return out


def _verdict_blocks(vs: list[verdict_rules.Verdict]) -> list[Block]:
    if not vs:
        return [
            (
                "p",
                "No verdict: the hypotheses compare a resnet with another model, and this comparison has no such pair.",
            )
        ]
    return [("verdicts", [(v.label, f"{v.hypothesis} — {v.a} vs {v.b}", v.sentence()) for v in vs])]


def _results_blocks(out_dir: Path, runs: dict[str, list[RunData]]) -> list[Block]:
    results = [r.result for rs in runs.values() for r in rs]
    models = list(runs)
    blocks: list[Block] = [("h2", "Results"), ("md", table_markdown(results))]
    # The study's Δ (first model − each other), then any pair a verdict judges that it misses.
    compared = [(models[0], b) for b in models[1:]]
    compared += [
        (a, b)
        for a, b, _ in verdict_rules.pairs(models, verdict_rules.twins(runs), verdict_rules.user_models(runs))
        if (a, b) not in compared and (b, a) not in compared
    ]
    evidence = [(a, b, accuracy_evidence(runs[a], runs[b])) for a, b in compared]
    blocks.append(("list", [accuracy_line(a, b, ev) for a, b, ev in evidence]))
    rows = [_evidence_row(a, b, ev) for a, b, ev in evidence if ev is not None]
    if rows:
        blocks += [
            (
                "table",
                [
                    "A − B",
                    "Δ final acc (pp)",
                    "per seed (pp)",
                    "paired t over seeds",
                    "two-level bootstrap",
                    "McNemar p per seed",
                    "McNemar p pooled",
                    "d_z",
                    "detectable (80% power)",
                ],
                rows,
            ),
            (
                "p",
                "Final weights' test accuracy, paired by seed. The paired t interval holds the test set "
                "fixed; the bootstrap also resamples test images. McNemar compares the two trained "
                "networks image by image. d_z is the mean per-seed difference over its sd; the last "
                "column is the smallest true difference this many seeds would detect at this spread.",
            ),
        ]
    on_study_data = dataset_of(runs).name == STUDY_DATASET
    study = [[m, f"{STUDY[m][0]:.2f}", f"{STUDY[m][1]:.4f}"] for m in models if m in STUDY and on_study_data]
    if study:
        blocks += [
            (
                "p",
                "The study's published figures (one 100-epoch run each, best epoch selected on the test "
                "set), for reference:",
            ),
            ("table", ["Model", "Test Acc(%)", "Test Loss"], study),
        ]
    per_seed = {m: [(r.cfg.seed, r.result.final.acc) for r in rs if r.result.final] for m, rs in runs.items()}
    if any(per_seed.values()):
        blocks.append(
            (
                "img",
                plots.plot_per_seed(
                    {m: v for m, v in per_seed.items() if v}, out_dir / "per_seed.png", "final test accuracy (%)"
                ),
                "Final test accuracy per seed",
            )
        )
    blocks += _classwise_blocks(out_dir, runs)
    return blocks


def _interval(e) -> str:
    return f"[{e.ci_low:+.2f}, {e.ci_high:+.2f}]" if e.has_interval() else f"none ({e.note})"


def _p(p: float | None) -> str:
    return "—" if p is None else f"{p:.3g}"


def _evidence_row(a: str, b: str, ev) -> list[str]:
    return [
        f"{a} − {b}",
        f"{ev.diff:+.2f}",
        ", ".join(f"{d:+.2f}" for d in ev.per_seed),
        _interval(ev.paired_t),
        _interval(ev.bootstrap),
        ", ".join(_p(m.p_value) for m in ev.mcnemar),
        _p(ev.mcnemar_pooled.p_value),
        "—" if ev.effect_dz is None else f"{ev.effect_dz:+.2f}",
        "—" if ev.mde_pp is None else f"{ev.mde_pp:.2f} pp",
    ]


def _final_arrays(rs: list[RunData]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(pred, label, logits) of the judging weights of each seed that has them."""
    out = []
    for r in rs:
        if r.predictions is not None and r.result.final is not None:
            w = "best" if r.result.selected_on == "validation" else "last"
            p = r.predictions
            out.append((p[f"{w}_pred"], p["label"], p[f"{w}_logits"].astype(np.float32)))
    return out


def _classwise_blocks(out_dir: Path, runs: dict[str, list[RunData]]) -> list[Block]:
    arrays = {m: _final_arrays(rs) for m, rs in runs.items()}
    arrays = {m: a for m, a in arrays.items() if a}
    if not arrays:
        return []
    ds = dataset_of(runs)
    n = ds.num_classes
    acc = {m: np.mean([per_class_accuracy(p, y, n) for p, y, _ in a], axis=0) for m, a in arrays.items()}
    rows = [[name] + [f"{acc[m][c]:.1f}" for m in arrays] for c, name in enumerate(ds.classes)]
    mats = {m: sum(confusion(p, y, n) for p, y, _ in a) for m, a in arrays.items()}
    cal = {
        m: calibration(np.concatenate([l for _, _, l in a]), np.concatenate([y for _, y, _ in a]))
        for m, a in arrays.items()
    }
    return [
        ("h3", "Per class"),
        ("table", ["Class"] + [f"{m} acc (%)" for m in arrays], rows),
        (
            "img",
            plots.plot_confusion(mats, out_dir / "confusion.png", ds.classes),
            "Confusion matrices of the final weights, summed over seeds, each row normalised",
        ),
        ("h3", "Calibration"),
        (
            "table",
            ["Model", "ECE (%)", "images"],
            [[m, f"{c['ece']:.2f}", f"{int(c['count'].sum()):,}"] for m, c in cal.items()],
        ),
        (
            "img",
            plots.plot_reliability(cal, out_dir / "reliability.png"),
            "Reliability diagram: accuracy against confidence, 15 bins",
        ),
    ]


def _metric_cell(rs: list[RunData], key: str) -> str:
    values = [r.metrics.get(key) for r in rs if r.metrics]
    present = [v for v in values if v is not None]
    if not present:
        return "—"
    text = summary(present).text()
    missed = sum(1 for r in rs if key in r.metrics.get("not_reached", []))
    return text + (f" ({missed} of {len(rs)} never reached: counted as epochs + 1)" if missed else "")


def _curve_blocks(out_dir: Path, runs: dict[str, list[RunData]]) -> list[Block]:
    groups = {m: [r.records for r in rs if r.records] for m, rs in runs.items()}
    groups = {m: g for m, g in groups.items() if g}
    figs = plots.plot_overlay(groups, out_dir) if groups else []
    keys = [k for k in METRIC_LABELS if any(k in r.metrics for rs in runs.values() for r in rs)]
    return (
        [("h2", "Curves")]
        + [
            ("img", p, alt)
            for p, alt in zip(
                figs,
                [
                    "Loss, log scale (train dashed, val solid; band ±1 sd over seeds)",
                    "Accuracy (train dashed, val solid; band ±1 sd over seeds)",
                ],
            )
        ]
        + [
            ("h2", "Convergence and stability"),
            (
                "table",
                ["Metric"] + list(runs),
                [[METRIC_LABELS[k]] + [_metric_cell(runs[m], k) for m in runs] for k in keys],
            ),
            (
                "p",
                "From each run's history; LR phases are read from its lr column. Jumps compare the mean "
                "of 3 epochs after an LR step with the mean of 3 before; fluctuation is the RMS deviation "
                "of val accuracy from its Savitzky–Golay trend (5 epochs, quadratic), so a fast climb "
                "does not count as instability.",
            ),
        ]
    )


def _gradflow_blocks(out_dir: Path, runs: dict[str, list[RunData]]) -> list[Block]:
    flows = {m: rs[0].flow for m, rs in runs.items() if rs[0].flow is not None}
    if not flows:
        return []
    path = plots.plot_gradflow(flows, out_dir / "gradflow_shared.png")
    return [
        ("h2", "Gradient flow"),
        ("img", path, "‖grad‖/‖weight‖ per layer over training (first seed of each model), one colour scale for all"),
        (
            "p",
            "Batch norm makes a layer's output blind to the scale of its weights, so the raw gradient norm "
            "shrinks as the weights grow; the ratio ‖g‖/‖w‖ is the relative step each layer takes.",
        ),
    ]


def _landscape_blocks(out_dir: Path, runs: dict[str, list[RunData]], differ: str | None) -> list[Block]:
    """Surfaces on one scale, the curvature table and what the depth pairs show."""
    with_landscape = {m: [r for r in rs if r.landscape is not None] for m, rs in runs.items()}
    with_landscape = {m: rs for m, rs in with_landscape.items() if rs}
    if not with_landscape:
        return []
    first = next(iter(with_landscape.values()))[0].landscape
    st = first["settings"]
    blocks: list[Block] = [
        ("h2", "Landscape"),
        (
            "p",
            f"Training loss around the {first['weights']} weights of each run, on {first['images']:,} "
            f"class-balanced training images (no augmentation, batch norm in eval mode), along "
            f"filter-normalized random directions (Li et al. 2018; directions seed {st['seed']}, "
            f"{st['resolution']} points over ±{st['span']:g}); curvature from Hessian-vector products: top "
            f"eigenvalues by Lanczos, the trace by Hutchinson's estimator ({st['trace_samples']} probes). "
            f"Measured on {first['device']}.",
        ),
    ]
    if differ is not None:
        blocks.append(
            (
                "warnings",
                [
                    f"The runs' landscapes were measured differently ({differ}), so they are not compared and "
                    f"H3 is left out; run archbench landscape on every run with the same settings."
                ],
            )
        )
    folder = out_dir / landscape_study.ls.FOLDER
    firsts = {m: rs[0] for m, rs in with_landscape.items()}
    surfaces = {
        f"{m} seed {r.cfg.seed}": (r.landscape_arrays["axis"], r.landscape_arrays["loss_2d"])
        for m, r in firsts.items()
        if "loss_2d" in r.landscape_arrays
    }
    if surfaces and differ is None:
        folder.mkdir(exist_ok=True)
        blocks.append(
            (
                "img",
                landscape_plots.plot_surfaces(surfaces, folder / "landscape_2d_shared.png"),
                "Training loss over the plane of two filter-normalized directions, first seed of each model, "
                "one log colour scale; the star marks the weights",
            )
        )
    curves = {
        f"{m} seed {r.cfg.seed}": (
            r.landscape_arrays["interp_alpha"],
            r.landscape_arrays["interp_loss"],
            r.landscape_arrays["interp_acc"],
        )
        for m, r in firsts.items()
        if "interp_loss" in r.landscape_arrays
    }
    if curves:
        folder.mkdir(exist_ok=True)
        blocks.append(
            (
                "img",
                landscape_plots.plot_curves(
                    curves, folder / "interp_overlay.png", "α: initial (0) → trained (1) weights", (0.0, 1.0)
                ),
                "Training loss on the straight line from each run's initial weights to its trained weights",
            )
        )
    seeds = landscape_study.read_seed_lines(folder)
    if seeds:
        blocks.append(
            (
                "img",
                landscape_study.draw_seed_lines(folder, seeds),
                "Training loss on the straight line between two seeds' solutions of each model",
            )
        )
    by_model = {m: [r.landscape for r in rs] for m, rs in with_landscape.items()}
    blocks += [
        ("table", landscape_study.CURVATURE_HEAD, landscape_study.curvature_rows(by_model)),
        (
            "p",
            "Mean ± sd across seeds. λmax is the sharpest direction's curvature, the trace the total "
            "curvature; lower is flatter. The loss rise is the mean of the 1-D slice's ends above its centre; the "
            "non-convex share is the fraction of the 2-D grid where the surface curves down along some "
            "direction; the barrier is how far the loss on the line from the initial weights rises above the "
            "straight line between its ends.",
        ),
    ]
    depth = landscape_study.depth_lines(by_model)
    if depth:
        blocks.append(("list", depth))
    return blocks


def failure_warnings(manifest) -> list[str]:
    """Runs of the grid that ended without a result: named, with the first line of why."""
    out = []
    for f in manifest.failed:
        why = f.reason.strip().splitlines()[0] if f.reason.strip() else "no reason was given"
        out.append(
            f"{f.model} seed {f.seed} ({f.dir}) failed and is left out of every table, figure and verdict: {why}"
        )
    return out


def _environment_blocks(manifest, runs: dict[str, list[RunData]], min_effect: float) -> list[Block]:
    env = manifest.environment
    cfg = next(iter(runs.values()))[0].cfg
    lrs = ", ".join(f"{m} {rs[0].cfg.lr:g}" for m, rs in runs.items())
    rows = [[k, str(v)] for k, v in env.items() if v is not None]
    per_model = []
    for m, rs in runs.items():
        secs = [rec["epoch_seconds"] for r in rs for rec in r.records if rec.get("epoch_seconds") is not None]
        per_model.append(
            [
                m,
                f"{rs[0].result.params:,}",
                f"{rs[0].result.flops_per_image / 1e9:.3f}",
                f"{np.mean(secs):.2f}" if secs else "—",
                ", ".join(str(r.cfg.seed) for r in rs),
            ]
        )
    return [
        ("h2", "Protocol"),
        (
            "list",
            [
                f"{cfg.epochs} epochs, batch {cfg.batch_size}, SGD (initial lr: {lrs}; momentum {cfg.momentum}, weight "
                f"decay {cfg.weight_decay}), MultiStepLR milestones {list(cfg.milestones)} gamma {cfg.gamma}",
                f"{cfg.pipeline} input pipeline, {cfg.precision}; train subset: {cfg.train_subset or 'all'}, "
                f"test subset: {cfg.test_subset or 'all'}"
                + (f", {cfg.val_split:,} held out for validation" if cfg.val_split else ""),
                selection_note(cfg),
                f"smallest accuracy difference of interest: {min_effect:g} pp",
            ],
        ),
        ("h3", "Environment"),
        ("table", ["What", "Value"], rows),
        ("table", ["Model", "Parameters", "GFLOPs / image (forward)", "s / epoch (mean)", "Seeds"], per_model),
    ]


def build(out_dir: Path, min_effect_pp: float | None = None) -> list[Block]:
    out_dir = Path(out_dir)
    manifest, runs = load(out_dir)
    min_effect = manifest.min_effect_pp if min_effect_pp is None else min_effect_pp
    measured = [r.landscape for rs in runs.values() for r in rs if r.landscape is not None]
    differ = landscape_study.settings_differ(measured) if measured else None
    vs = verdict_rules.verdicts(runs, min_effect, with_curvature=differ is None)
    blocks: list[Block] = [("h1", f"archbench report: {' vs '.join(runs)}"), ("h2", "Verdicts")]
    blocks += _verdict_blocks(vs)
    warn = failure_warnings(manifest) + warnings(runs)
    if warn:
        blocks += [("warnings", warn)]
    blocks += _results_blocks(out_dir, runs)
    blocks += _curve_blocks(out_dir, runs)
    blocks += _gradflow_blocks(out_dir, runs)
    blocks += _landscape_blocks(out_dir, runs, differ)
    blocks += _environment_blocks(manifest, runs, min_effect)
    blocks += [
        ("h2", "Rules"),
        ("p", " ".join(verdict_rules.__doc__.split())),
        (
            "p",
            "Intervals: run-level metrics use a paired t interval over seeds (seeds pair runs: same data "
            "order and augmentation); final accuracy uses a two-level bootstrap that resamples seeds and "
            "then test images, so it includes test-set sampling noise; a verdict needs both it and the "
            "paired t (the larger p). McNemar's exact test asks whether two trained networks differ on "
            "this test set; it does not generalise over seeds. Where nothing varies (ties at every "
            "seed) no interval or p-value is given; with one seed the bootstrap interval covers "
            "test-image noise only, says so, and no verdict rests on it.",
        ),
    ]
    return blocks


# ---------------------------------------------------------------- rendering


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def to_markdown(blocks: list[Block], base: Path) -> str:
    out = []
    for kind, *rest in blocks:
        if kind in ("h1", "h2", "h3"):
            out.append("#" * int(kind[1]) + " " + rest[0])
        elif kind in ("p", "md"):
            out.append(rest[0].rstrip("\n"))
        elif kind == "list":
            out.append("\n".join(f"- {item}" for item in rest[0]))
        elif kind == "warnings":
            out.append("\n".join(f"> ⚠ {w}" for w in rest[0]))
        elif kind == "verdicts":
            out.append("\n\n".join(f"> **{label.upper()}** · {title}  \n> {text}" for label, title, text in rest[0]))
        elif kind == "table":
            head, rows = rest
            lines = ["| " + " | ".join(map(_md_cell, head)) + " |", "|" + "|".join("---" for _ in head) + "|"]
            lines += ["| " + " | ".join(map(_md_cell, r)) + " |" for r in rows]
            out.append("\n".join(lines))
        elif kind == "img":
            path, alt = rest
            out.append(f"![{alt}]({Path(path).relative_to(base).as_posix()})")
    return "\n\n".join(out) + "\n"


def _md_table_to_html(text: str) -> str:
    """The study's table is written once, as Markdown; this renders its table rows and notes."""
    lines = text.strip("\n").splitlines()
    rows = [line for line in lines if line.startswith("|")]
    notes = [line for line in lines if line and not line.startswith("|")]
    cells = [[c.strip() for c in r.strip("|").split("|")] for r in rows if not set(r) <= set("|-")]
    head, body = cells[0], cells[1:]
    return _html_table(head, body) + "".join(f'<p class="note">{html.escape(n)}</p>' for n in notes)


def _html_table(head: list[str], rows: list[list[str]]) -> str:
    return (
        "<table><tr>"
        + "".join(f"<th>{html.escape(h)}</th>" for h in head)
        + "</tr>"
        + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
        + "</table>"
    )


def to_html(blocks: list[Block], title: str) -> str:
    body = []
    for kind, *rest in blocks:
        if kind in ("h1", "h2", "h3"):
            body.append(f"<{kind}>{html.escape(rest[0])}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{html.escape(rest[0])}</p>")
        elif kind == "md":
            body.append(_md_table_to_html(rest[0]))
        elif kind == "list":
            body.append("<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in rest[0]) + "</ul>")
        elif kind == "warnings":
            body.append('<div class="warnings">' + "".join(f"<p>⚠ {html.escape(w)}</p>" for w in rest[0]) + "</div>")
        elif kind == "verdicts":
            boxes = "".join(
                f'<div class="verdict" style="border-color:{LABEL_COLORS[label]}">'
                f'<span class="label" style="background:{LABEL_COLORS[label]}">{html.escape(label)}</span> '
                f"<strong>{html.escape(t)}</strong><p>{html.escape(text)}</p></div>"
                for label, t, text in rest[0]
            )
            body.append(f'<section id="verdicts">{boxes}</section>')
        elif kind == "table":
            body.append(_html_table(*rest))
        elif kind == "img":
            path, alt = rest
            data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
            body.append(
                f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{html.escape(alt)}</figcaption></figure>"
            )
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
        "text-align:left;vertical-align:top}th{background:#f3f3f3}img{max-width:100%}"
        "figcaption{color:#555;font-size:90%}.note{color:#555;font-size:90%;margin:.2em 0}"
        ".verdict{border-left:6px solid;padding:.4em .8em;margin:.6em 0;background:#fafafa}"
        ".verdict p{margin:.3em 0 0}.label{color:#fff;border-radius:3px;padding:1px 6px;font-size:85%;"
        "text-transform:uppercase}.warnings{background:#fff6d6;border:1px solid #e0c060;padding:.2em .8em}"
    )
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def write_report(out_dir: Path, min_effect_pp: float | None = None) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    blocks = build(out_dir, min_effect_pp)
    md, page = out_dir / "report.md", out_dir / "report.html"
    atomic_write_text(md, to_markdown(blocks, out_dir))
    atomic_write_text(page, to_html(blocks, blocks[0][1]))
    return md, page
