"""The command line end to end, as a user runs it: compare, eval, plot, resume, errors."""

import csv
import io
import lzma
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, SAMPLE_DIR, needs_sample, synthetic

SMALL = ["--train-subset", "40", "--test-subset", "20", "--batch-size", "16", "--device", "cpu", "--quiet"]


def archbench(*args, cwd=None, check=True, **kw):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    p = subprocess.run(
        [sys.executable, "-m", "archbench", *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env, **kw
    )
    if check and p.returncode != 0:
        raise AssertionError(f"archbench {' '.join(map(str, args))} failed:\n{p.stdout}\n{p.stderr}")
    return p


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    if not SAMPLE_DIR.is_dir():
        pytest.skip(f"CIFAR-10 sample not found at {SAMPLE_DIR} (../shared is absent)")
    out = tmp_path_factory.mktemp("cmp") / "out"
    cfg = out.parent / "exp.toml"
    cfg.write_text("epochs = 2\nmilestones = [1]\n")
    p = archbench("compare", "--config", cfg, "--data-dir", SAMPLE_DIR, "--out", out, *SMALL)
    return out, p.stdout


def _table(stdout: str) -> dict[str, list[str]]:
    rows = [l for l in stdout.splitlines() if l.startswith("| ") and not l.startswith("| Model")]
    return {r.split("|")[1].strip(): [c.strip() for c in r.split("|")[2:-1]] for r in rows}


def test_models_command_lists_exact_counts():
    out = archbench("models").stdout
    assert re.search(r"resnet18\s+11,173,962\s+11\.17", out)
    assert re.search(r"vgg19_bn\s+38,958,922\s+38\.96", out)
    assert re.search(r"vgg19\s+38,947,914\s+38\.95", out)


def test_compare_prints_the_study_table_and_writes_everything(compared):
    out, stdout = compared
    assert "| Model | Test Loss | Test Acc(%)² | #Params(M) | Best Val(%) | Final Acc(%)³ |" in stdout
    assert re.search(r"Δ final accuracy \(resnet18 − vgg19_bn\) = [+-]\d+\.\d\d pp .*one seed per model", stdout)
    assert "epoch   1/2" in stdout  # the study's summary line at epoch 1
    assert re.search(r"^compare took \d+\.\d s \(wall clock", stdout, re.M)
    for name in (
        "comparison.json",
        "comparison.csv",
        "comparison.md",
        "overlay_loss.png",
        "overlay_accuracy.png",
        "report.md",
        "report.html",
    ):
        assert (out / name).stat().st_size > 0, name
    for model in ("resnet18", "vgg19_bn"):
        for name in (
            "config.json",
            "history.csv",
            "history.jsonl",
            "last.pt",
            "best.pt",
            "loss.png",
            "accuracy.png",
            "final.json",
            "predictions.npz",
        ):
            assert (out / model / name).stat().st_size > 0, f"{model}/{name}"
    assert '"epochs": 2' in (out / "resnet18" / "config.json").read_text()  # from the file
    assert '"batch_size": 16' in (out / "resnet18" / "config.json").read_text()  # from a flag


def test_reloaded_best_weights_reproduce_the_best_epoch(compared):
    """Test set = validation set here, so the final table must equal the best history row."""
    out, stdout = compared
    table = _table(stdout)
    for row in csv.DictReader(io.StringIO((out / "comparison.csv").read_text())):
        hist = list(csv.DictReader(io.StringIO((out / row["model"] / "history.csv").read_text())))
        best = hist[int(row["best_epoch"]) - 1]
        assert float(row["best_test_acc"]) == pytest.approx(float(best["val_acc"]), abs=1e-6)
        assert float(row["best_test_loss"]) == pytest.approx(float(best["val_loss"]), rel=1e-4)
        assert float(row["best_val"]) == max(float(h["val_acc"]) for h in hist)
        assert table[row["model"]][1] == f"{float(row['best_test_acc']):.2f}"
        last = hist[-1]  # and the last weights reproduce the last epoch
        assert float(row["last_test_acc"]) == pytest.approx(float(last["val_acc"]), abs=1e-6)
        assert row["final_test_acc"] == row["last_test_acc"]  # no held-out split: the last weights judge


def test_rerunning_compare_reuses_finished_runs(compared):
    out, stdout = compared
    before = (out / "resnet18" / "last.pt").read_bytes()
    again = archbench("compare", "--epochs", 2, "--milestones", 1, "--data-dir", SAMPLE_DIR, "--out", out, *SMALL)
    assert "finished run found" in again.stdout
    assert (out / "resnet18" / "last.pt").read_bytes() == before
    assert _table(again.stdout) == _table(stdout)


def test_eval_command_matches_compare(compared, tmp_path):
    out, stdout = compared
    p = archbench("eval", out / "resnet18", out / "vgg19_bn", "--data-dir", SAMPLE_DIR, "--device", "cpu")
    assert _table(p.stdout) == _table(stdout)
    assert "Δ final accuracy (resnet18 − vgg19_bn)" in p.stdout


def test_eval_reports_exact_subset_with_footnote(compared, tmp_path):
    out, _ = compared
    d = synthetic(10, 40, seed=9, exact_every=4)
    folder = tmp_path / "npz"
    folder.mkdir()
    for name, arrays in (
        ("train-0", dict(x_train=d.x_train, y_train=d.y_train)),
        ("test", dict(x_test=d.x_test, y_test=d.y_test, lossless=d.test_exact)),
    ):
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        (folder / f"{name}.npz.xz").write_bytes(lzma.compress(buf.getvalue()))
    p = archbench("eval", out / "resnet18", "--data-dir", folder, "--device", "cpu")
    assert "Final Exact(%)¹" in p.stdout
    assert re.search(r"¹ On the 15 of 20 test images that are pixel-exact", p.stdout)


def test_plot_regenerates_figures_from_history_alone(compared, tmp_path):
    out, _ = compared
    copy = tmp_path / "runs"
    shutil.copytree(out, copy)
    for f in list(copy.rglob("*.png")) + list(copy.rglob("*.pt")):
        f.unlink()
    archbench("plot", copy)
    for name in (
        "resnet18/loss.png",
        "resnet18/accuracy.png",
        "vgg19_bn/loss.png",
        "overlay_loss.png",
        "overlay_accuracy.png",
    ):
        assert (copy / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


@pytest.mark.slow
@needs_sample
def test_killed_run_resumes_to_completion(tmp_path):
    """Through tests/fault_driver.py (no fault injected), which registers the tiny model."""
    out = tmp_path / "out"
    args = ["train", "tiny", "--epochs", 4, "--data-dir", SAMPLE_DIR, "--out", out, *SMALL]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    cmd = [sys.executable, str(REPO / "tests" / "fault_driver.py"), "none", *map(str, args)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    hist = out / "tiny" / "history.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (hist.exists() and hist.read_text().count("\n") >= 1):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = hist.read_text().count("\n")
    assert 1 <= done_before < 4, "the run should have been killed part-way"
    refused = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert refused.returncode == 1 and "pass --resume" in refused.stderr
    resumed = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    lines = (out / "tiny" / "history.csv").read_text().splitlines()
    assert [l.split(",")[0] for l in lines[1:]] == ["1", "2", "3", "4"]


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--epochs", "0"], "epochs=0 is invalid"),
        (["--milestones", "5", "3"], "milestones=[5, 3] is invalid"),
        (["--lr", "-1"], "lr=-1.0 is invalid"),
        (["--batch-size", "0"], "batch_size=0 is invalid"),
        (["resnet99"], "unknown model 'resnet99'; available: resnet18"),
        (["--data-dir", "/nonexistent/cifar"], "CIFAR-10 not found (tried --data-dir = /nonexistent/cifar)"),
    ],
)
def test_bad_input_is_one_line_on_stderr_and_exit_1(tmp_path, args, expected):
    p = archbench("compare", *args, "--out", tmp_path / "o", "--device", "cpu", check=False, cwd=tmp_path)
    assert p.returncode == 1
    assert expected in p.stderr and p.stderr.count("\n") == 1, p.stderr
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").rglob("*.pt"))


def test_unparseable_flag_is_one_line_too():
    p = archbench("compare", "--epochs", "ten", check=False)
    assert p.returncode == 2 and "invalid int value: 'ten'" in p.stderr and p.stderr.count("\n") == 1
