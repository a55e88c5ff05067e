"""``report.md`` and a self-contained ``report.html`` for a compare output folder.

Everything comes from files in the folder: each run's ``config.json``, history,
``final.json`` (its best weights' test evaluation) and plots. The report is a list of
blocks rendered twice: as Markdown (images linked) and as HTML (images embedded).
"""

from __future__ import annotations

import base64
import csv
import html
import io
from pathlib import Path

from archbench.train import history
from archbench.analysis.compare import by_model, delta_lines, read_final, selection_note
from archbench.config import read_json
from archbench.errors import ArchbenchError
from archbench.io_utils import atomic_write_text
from archbench.analysis.metrics import summarize
from archbench.analysis.stats import summary
from archbench.analysis.verdicts import RunFacts, verdicts
from archbench.analysis import verdicts as verdict_rules

# The study's published single-run results (SPEC.md): test accuracy (%) and test loss.
STUDY = {"resnet18": (94.99, 0.1937), "vgg19_bn": (92.87, 0.3345)}
METRIC_LABELS = {
    "epochs_to_80": "epochs to 80% val acc",
    "epochs_to_90": "epochs to 90% val acc",
    "phase1_val_acc_std": "val acc std, first LR phase (pp)",
    "phase1_val_acc_mean_abs_change": "mean |Δ val acc| per epoch, first LR phase (pp)",
    "milestone1_val_acc_jump": "val acc jump at 1st LR step (pp)",
    "milestone1_val_loss_jump": "val loss jump at 1st LR step",
    "milestone2_val_acc_jump": "val acc jump at 2nd LR step (pp)",
    "milestone2_val_loss_jump": "val loss jump at 2nd LR step",
    "plateau_val_acc_mean": "plateau val acc, last 20 epochs (%)",
    "plateau_val_acc_range": "plateau val acc range (pp)",
    "final_acc_gap": "final train − val acc gap (pp)",
    "final_loss_gap": "final val − train loss gap",
    "best_epoch": "best epoch",
    "best_val_acc": "best val acc (%)",
}

Block = tuple


def find_runs(out_dir: Path) -> list[Path]:
    """Run folders below ``out_dir``, in the order compare listed them (comparison.csv), then the rest."""
    runs = sorted(p.parent for p in Path(out_dir).rglob("config.json") if (p.parent / "history.jsonl").is_file())
    if not runs:
        raise ArchbenchError(f"{out_dir}: no run folders (config.json + history.jsonl) below it; "
                             f"run archbench compare --out {out_dir} first")
    listed = Path(out_dir) / "comparison.csv"
    if listed.is_file():
        order = [Path(row["run_dir"]).resolve() for row in csv.DictReader(io.StringIO(listed.read_text()))]
        rank = {p: i for i, p in enumerate(order)}
        runs.sort(key=lambda r: rank.get(r.resolve(), len(rank)))
    return runs


def _facts(run_dir: Path) -> tuple[RunFacts | None, dict]:
    cfg = read_json(run_dir / "config.json")
    records = history.read(run_dir)
    final = read_final(run_dir)
    if final is None or not records:
        return None, {}
    return RunFacts(cfg.model, cfg.seed, final.params, len(records), final.test_acc, summarize(records)), \
        {"cfg": cfg, "final": final, "dir": run_dir}


def _cell(values: list) -> str:
    present = [v for v in values if v is not None]
    if not present:
        return "not reached"
    text = summary(present).text()
    return text if len(present) == len(values) else f"{text} ({len(present)}/{len(values)} runs)"


def build(out_dir: Path) -> list[Block]:
    out_dir = Path(out_dir)
    facts: dict[str, list[RunFacts]] = {}
    extra: dict[str, list[dict]] = {}
    for run_dir in find_runs(out_dir):
        f, x = _facts(run_dir)
        if f is not None:
            facts.setdefault(f.model, []).append(f)
            extra.setdefault(f.model, []).append(x)
    if not facts:
        raise ArchbenchError(f"{out_dir}: no run has a final evaluation ({'final.json'}); "
                             f"run archbench compare --out {out_dir} to produce them")
    cfg = next(iter(extra.values()))[0]["cfg"]
    finals = [x["final"] for xs in extra.values() for x in xs]
    lrs = ", ".join(f"{m} {xs[0]['cfg'].lr:g}" for m, xs in extra.items())
    blocks: list[Block] = [("h1", "archbench report"), ("h2", "Protocol"), ("list", [
        f"{cfg.epochs} epochs, batch {cfg.batch_size}, SGD (initial lr: {lrs}; momentum "
        f"{cfg.momentum}, weight decay {cfg.weight_decay}), MultiStepLR milestones {list(cfg.milestones)} "
        f"gamma {cfg.gamma}",
        f"{cfg.pipeline} input pipeline, {cfg.precision}; train subset: {cfg.train_subset or 'all'}, "
        f"test subset: {cfg.test_subset or 'all'}",
        selection_note(cfg),
        "Seeds per model: " + ", ".join(f"{m}: {sorted(r.seed for r in rs)}" for m, rs in facts.items()),
    ])]
    rows = []
    for model, xs in by_model(finals).items():
        study = STUDY.get(model)
        rows.append([model, str(len(xs)), summary([r.test_acc for r in xs]).text(),
                     summary([r.test_loss for r in xs]).text(".4f"), f"{xs[0].params / 1e6:.2f}",
                     summary([r.best_val for r in xs]).text(),
                     f"{study[0]:.2f} / {study[1]:.4f}" if study else "—"])
    blocks += [("h2", "Results"),
               ("table", ["Model", "n", "Test Acc(%)", "Test Loss", "#Params(M)", "Best Val(%)",
                          "Study: Test Acc(%) / Loss"], rows),
               ("p", "Cells are mean ± sample standard deviation over seeds. The study's figures are "
                     "one 100-epoch run each.")]
    blocks += [("list", delta_lines(finals))]
    figs = [(out_dir / f"overlay_{k}.png", f"{k} curves, train dashed, val solid") for k in ("accuracy", "loss")]
    blocks += [("h2", "Curves")] + [("img", p, alt) for p, alt in figs if p.is_file()]
    keys = [k for k in METRIC_LABELS if any(k in f.metrics for fs in facts.values() for f in fs)]
    blocks += [("h2", "Convergence and stability"),
               ("table", ["Metric"] + list(facts),
                [[METRIC_LABELS[k]] + [_cell([f.metrics.get(k) for f in facts[m]]) for m in facts] for k in keys]),
               ("p", "From each run's history; LR phases and milestones are read from its lr column. "
                     "Jumps compare the last epoch before an LR step with the best of the 3 epochs after it.")]
    grad = [(x["dir"] / name, f"{m} ({x['dir'].name}): {alt}") for m, xs in extra.items() for x in xs[:1]
            for name, alt in (("gradflow.png", "per-layer gradient L2 norm"),
                              ("gradflow_ratio.png", "first-layer / last-layer gradient norm"))]
    if any(p.is_file() for p, _ in grad):
        blocks += [("h2", "Gradient flow")] + [("img", p, alt) for p, alt in grad if p.is_file()]
    vs = verdicts(facts)
    blocks += [("h2", "Verdicts")]
    if vs:
        blocks += [("table", ["Hypothesis", "A vs B", "Verdict", "Evidence (A − B)"],
                    [[v.hypothesis, f"{v.a} vs {v.b}", v.verdict, "; ".join(v.evidence)] for v in vs])]
    else:
        blocks += [("p", "No verdict: the hypotheses compare a resnet with another model, and this "
                         "comparison has no such pair.")]
    blocks += [("p", "Rules: " + " ".join(verdict_rules.__doc__.split("\n", 1)[1].split()))]
    return blocks


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def to_markdown(blocks: list[Block], base: Path) -> str:
    out = []
    for kind, *rest in blocks:
        if kind in ("h1", "h2"):
            out.append(("# " if kind == "h1" else "## ") + rest[0])
        elif kind == "p":
            out.append(rest[0])
        elif kind == "list":
            out.append("\n".join(f"- {item}" for item in rest[0]))
        elif kind == "table":
            head, rows = rest
            lines = ["| " + " | ".join(map(_md_cell, head)) + " |", "|" + "|".join("---" for _ in head) + "|"]
            lines += ["| " + " | ".join(map(_md_cell, r)) + " |" for r in rows]
            out.append("\n".join(lines))
        elif kind == "img":
            path, alt = rest
            out.append(f"![{alt}]({Path(path).relative_to(base).as_posix()})")
    return "\n\n".join(out) + "\n"


def to_html(blocks: list[Block]) -> str:
    body = []
    for kind, *rest in blocks:
        if kind in ("h1", "h2"):
            body.append(f"<{kind}>{html.escape(rest[0])}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{html.escape(rest[0])}</p>")
        elif kind == "list":
            body.append("<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in rest[0]) + "</ul>")
        elif kind == "table":
            head, rows = rest
            body.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>" +
                        "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows) +
                        "</table>")
        elif kind == "img":
            path, alt = rest
            data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
            body.append(f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{html.escape(alt)}</figcaption></figure>")
    style = ("body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
             "text-align:left;vertical-align:top}th{background:#f3f3f3}img{max-width:100%}"
             "figcaption{color:#555;font-size:90%}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>archbench report</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_report(out_dir: Path) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    blocks = build(out_dir)
    md, page = out_dir / "report.md", out_dir / "report.html"
    atomic_write_text(md, to_markdown(blocks, out_dir))
    atomic_write_text(page, to_html(blocks))
    return md, page
