"""Seeds, divergence as an outcome, predictions, validation split and the report, end to end on the sample data."""

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from archbench.analysis.compare import read_final
from archbench.config import Config
from archbench.data.sources import CifarData
from archbench.train.runner import Run, hold_out_validation
from browser import CHROMIUM, inspect_page
from conftest import REPO, SAMPLE_DIR, synthetic
from test_cli import archbench

DRIVER = Path(__file__).with_name("fault_driver.py")
MODELS = ("resnet18", "plain18", "vgg19_bn")
# Two epochs of one step each; the second training loss of the process (resnet18 seed 0,
# epoch 2) is made NaN, so one run diverges and the comparison must go on without it.
SMOKE = [
    *MODELS,
    "--seeds",
    "0",
    "1",
    "--epochs",
    "2",
    "--milestones",
    "2",
    "--train-subset",
    "20",
    "--test-subset",
    "20",
    "--batch-size",
    "20",
    "--device",
    "cpu",
    "--quiet",
]
LABELS = r"(supported|contradicted|not shown|not applicable)"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    if not SAMPLE_DIR.is_dir():
        pytest.skip(f"CIFAR-10 sample not found at {SAMPLE_DIR} (../shared is absent)")
    out = tmp_path_factory.mktemp("smoke") / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    p = subprocess.run(
        [sys.executable, str(DRIVER), "nan:2", "compare", *SMOKE, "--data-dir", str(SAMPLE_DIR), "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    return out, p.stdout


def test_every_run_folder_holds_its_evaluation_and_predictions(smoke):
    out, _ = smoke
    for model in MODELS:
        for seed in (0, 1):
            d = out / model / f"seed{seed}"
            for name in (
                "config.json",
                "history.jsonl",
                "final.json",
                "predictions.npz",
                "gradflow.csv",
                "gradflow.png",
            ):
                assert (d / name).is_file(), f"{d}/{name}"
            assert f'"seed": {seed}' in (d / "config.json").read_text()
    manifest = json.loads((out / "comparison.json").read_text())
    assert manifest["models"] == list(MODELS)
    assert [r["dir"] for r in manifest["runs"]] == [f"{m}/seed{s}" for m in MODELS for s in (0, 1)]


def test_predictions_have_one_row_per_test_image_and_match_the_recorded_accuracy(smoke):
    out, _ = smoke
    d = out / "plain18" / "seed1"
    final = read_final(d)
    with np.load(d / "predictions.npz") as z:
        p = {k: z[k] for k in z.files}
    assert len(p["index"]) == len(p["label"]) == final.images == 20
    assert len(set(p["index"].tolist())) == 20 and p["index"].max() < 10_000  # official test indices
    for which, ev in (("best", final.best), ("last", final.last)):
        assert p[f"{which}_logits"].dtype == np.float16 and p[f"{which}_logits"].shape == (20, 10)
        assert p[f"{which}_loss"].shape == (20,)
        assert 100.0 * np.mean(p[f"{which}_pred"] == p["label"]) == ev.acc
        assert abs(float(p[f"{which}_loss"].mean()) - ev.loss) < 1e-5 * max(1.0, ev.loss)


def test_a_diverged_run_is_an_outcome_and_the_comparison_finishes(smoke):
    out, stdout = smoke
    d = out / "resnet18" / "seed0"
    record = json.loads((d / "divergence.json").read_text())
    assert (record["epoch"], record["step"]) == (2, 1)
    assert "divergence recorded as this run's outcome; the comparison goes on" in stdout
    assert read_final(d).diverged == {"epoch": 2, "step": 1} and read_final(d).last.epoch == 1
    assert "| seed 0 at epoch 2 |" in stdout  # the table's Diverged column
    md = (out / "report.md").read_text()
    assert "resnet18 seed 0 diverged at epoch 2, step 1; it counts against resnet18 in H1" in md
    assert re.search(r"\*\*CONTRADICTED\*\* · H1: .* — resnet18 vs plain18", md)


def test_report_leads_with_verdicts_then_warnings_then_results(smoke):
    out, _ = smoke
    md = (out / "report.md").read_text()
    order = [md.index(s) for s in ("## Verdicts", "> ⚠", "## Results", "![", "## Protocol", "## Rules")]
    assert order == sorted(order)
    found = re.findall(r"> \*\*([A-Z ]+)\*\* · (.+?) — (\w+) vs (\w+)", md)
    assert [(h[:2], a, b) for _, h, a, b in found] == [
        ("H1", "resnet18", "plain18"),
        ("H2", "resnet18", "plain18"),
        ("Fi", "resnet18", "plain18"),
        ("H1", "resnet18", "vgg19_bn"),
        ("H2", "resnet18", "vgg19_bn"),
    ]
    assert found[1][0] == "NOT APPLICABLE"  # H2 against the plain twin
    assert all(re.fullmatch(LABELS, label.lower()) for label, *_ in found)
    for warning in (
        "Smoke run: 2 epochs",
        "near chance",
        "Small test set: 20 images",
        "selected on the test set (the study's choice)",
    ):
        assert warning in md, warning
    for section in (
        "### Per class",
        "### Calibration",
        "## Curves",
        "## Convergence and stability",
        "## Gradient flow",
        "### Environment",
    ):
        assert section in md
    assert "| airplane |" in md and "ECE (%)" in md and "94.99" in md
    assert "p = 0 " not in md and "p = 0)" not in md  # never a p of 0 from ties


def test_report_html_is_self_contained_with_embedded_images(smoke):
    out, _ = smoke
    page = (out / "report.html").read_text()
    srcs = re.findall(r'<img [^>]*src="([^"]+)"', page)
    assert len(srcs) >= 6  # per seed, confusion, reliability, two overlays, gradient flow
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    assert base64.b64decode(srcs[0].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert page.index('id="verdicts"') < page.index("<img")


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed (apt-get install chromium)")
def test_report_renders_in_a_browser_verdicts_above_the_first_plot_every_image_loaded(smoke):
    out, _ = smoke
    page = inspect_page(out / "report.html", "#verdicts")
    assert page["target"]["found"] and page["images"]
    assert page["target"]["bottom"] <= min(img["top"] for img in page["images"])
    broken = [img["src"] for img in page["images"] if not img["complete"] or img["naturalWidth"] == 0]
    assert broken == []


def test_a_moved_copy_without_checkpoints_gives_the_same_report(smoke, tmp_path):
    out, _ = smoke
    copy = tmp_path / "moved" / "elsewhere"
    shutil.copytree(out, copy)
    for f in list(copy.rglob("*.pt")) + [copy / "report.md", copy / "report.html"]:
        f.unlink()
    archbench("report", copy)
    assert (copy / "report.md").read_text() == (out / "report.md").read_text()
    assert "Δ final accuracy (resnet18 − plain18)" in (copy / "report.md").read_text()


def test_a_leftover_run_in_the_folder_is_not_pooled(smoke, tmp_path):
    out, _ = smoke
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    for leftover in (copy / "plain18" / "seed7", copy / "plain18"):
        shutil.copytree(out / "plain18" / "seed1", leftover, dirs_exist_ok=True)
    archbench("report", copy)
    assert (copy / "report.md").read_text() == (out / "report.md").read_text()


def test_runs_of_differing_protocols_or_missing_runs_are_refused(smoke, tmp_path):
    out, _ = smoke
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    cfg_path = copy / "plain18" / "seed0" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**cfg, "batch_size": 10}))
    p = archbench("report", copy, check=False)
    assert p.returncode == 1 and p.stderr.count("\n") == 1
    assert "differ in protocol (batch_size: 20 in" in p.stderr
    cfg_path.write_text(json.dumps(cfg))
    shutil.rmtree(copy / "vgg19_bn" / "seed1")
    p = archbench("report", copy, check=False)
    assert p.returncode == 1 and "vgg19_bn/seed1 is listed in the comparison but missing" in p.stderr


def test_report_on_a_folder_without_runs_is_a_clear_error(tmp_path):
    p = archbench("report", tmp_path, check=False)
    assert p.returncode == 1 and "no comparison.json; run archbench compare" in p.stderr


def test_duplicate_seeds_are_refused(tmp_path):
    p = archbench("compare", "--seeds", "0", "0", "--out", tmp_path, check=False)
    assert p.returncode == 1 and "a seed is named twice" in p.stderr


def test_validation_split_is_stratified_seeded_and_disjoint():
    d = synthetic(200, 20)
    a, b, c = (hold_out_validation(d, 30, seed) for seed in (0, 0, 1))
    assert len(a.y_train) == 170 and len(a.y_test) == 30
    assert np.bincount(a.y_test, minlength=10).tolist() == [3] * 10
    np.testing.assert_array_equal(a.x_test, b.x_test)
    assert not np.array_equal(a.x_test, c.x_test)
    train_rows = {x.tobytes() for x in a.x_train}
    assert not any(x.tobytes() in train_rows for x in a.x_test)


def test_with_a_validation_split_training_never_touches_the_test_set(tmp_path):
    d = synthetic(60, 20)
    no_test = CifarData(d.x_train, d.y_train, d.x_test[:0], d.y_test[:0], None, "no test images")
    cfg = Config(model="resnet18", epochs=1, batch_size=20, device="cpu", quiet=True)
    state = Run(cfg.replace(val_split=10), tmp_path / "a", log=lambda m: None).train(lambda: no_test)
    assert state.epoch == 1 and state.records[0]["val_acc"] in {10.0 * k for k in range(11)}  # 10 images
    with pytest.raises(ValueError, match="evaluate got no batches"):  # without a split the test set is used
        Run(cfg, tmp_path / "b", log=lambda m: None).train(lambda: no_test)
