"""Seeds, validation split, gradient flow and the report, end to end on the sample data."""

import base64
import re
import shutil

import numpy as np
import pytest

from archbench.config import Config
from archbench.data.sources import Cifar10
from archbench.train.runner import Run, hold_out_validation

from conftest import SAMPLE_DIR, synthetic
from test_cli import archbench

SMOKE = ["resnet18", "plain18", "--seeds", "0", "1", "--epochs", "3", "--milestones", "2",
         "--train-subset", "40", "--test-subset", "20", "--batch-size", "20", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    if not SAMPLE_DIR.is_dir():
        pytest.skip(f"CIFAR-10 sample not found at {SAMPLE_DIR} (../shared is absent)")
    out = tmp_path_factory.mktemp("smoke") / "out"
    p = archbench("compare", *SMOKE, "--data-dir", SAMPLE_DIR, "--out", out)
    return out, p.stdout


def test_seeds_make_one_folder_per_model_and_seed(smoke):
    out, _ = smoke
    for model in ("resnet18", "plain18"):
        for seed in (0, 1):
            d = out / model / f"seed{seed}"
            for name in ("config.json", "history.jsonl", "final.json", "gradflow.csv", "gradflow.png"):
                assert (d / name).is_file(), f"{d}/{name}"
            assert f'"seed": {seed}' in (d / "config.json").read_text()


def test_table_shows_mean_std_n_and_a_welch_interval(smoke):
    _, stdout = smoke
    assert "| Model | Test Loss | Test Acc(%) | #Params(M) | Best Val(%) | n |" in stdout
    assert re.search(r"\| resnet18 \| [\d.]+ ± [\d.]+ \| [\d.]+ ± [\d.]+ \| 11\.17 \| .* \| 2 \|", stdout)
    assert re.search(r"Δ Accuracy \(resnet18 − plain18\) = [+-][\d.]+ pp \(95% CI \[.*\], Welch's t, p = ", stdout)


def test_report_markdown_has_every_section(smoke):
    out, _ = smoke
    md = (out / "report.md").read_text()
    for section in ("## Protocol", "## Results", "## Curves", "## Convergence and stability",
                    "## Gradient flow", "## Verdicts"):
        assert section in md
    assert "94.99 / 0.1937" in md  # the study's figure beside this run's
    assert "selected on the test set, as in the study" in md
    assert re.search(r"\| H1: .* \| resnet18 vs plain18 \| (supported|not supported|inconclusive) \|", md)
    assert re.search(r"\| H2: .* \| resnet18 vs plain18 \| (supported|not supported|inconclusive) \|", md)
    assert "epochs to 80% val acc" in md and "Rules: H1" in md


def test_report_html_is_self_contained_with_embedded_images(smoke):
    out, _ = smoke
    page = (out / "report.html").read_text()
    srcs = re.findall(r'<img [^>]*src="([^"]+)"', page)
    assert len(srcs) >= 4  # two overlays + gradient-flow figures
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    assert base64.b64decode(srcs[0].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<table>" in page and "Verdicts" in page


def test_report_regenerates_without_checkpoints(smoke, tmp_path):
    out, _ = smoke
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    for f in list(copy.rglob("*.pt")) + [copy / "report.md", copy / "report.html"]:
        f.unlink()
    p = archbench("report", copy)
    assert "report.md" in p.stdout
    assert (copy / "report.md").read_text().splitlines()[0] == "# archbench report"


def test_report_on_a_folder_without_runs_is_a_clear_error(tmp_path):
    p = archbench("report", tmp_path, check=False)
    assert p.returncode == 1 and "no run folders" in p.stderr


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
    no_test = Cifar10(d.x_train, d.y_train, d.x_test[:0], d.y_test[:0], None, "no test images")
    cfg = Config(model="resnet18", epochs=1, batch_size=20, device="cpu", quiet=True)
    state = Run(cfg.replace(val_split=10), tmp_path / "a", log=lambda m: None).train(lambda: no_test)
    assert state.epoch == 1 and state.records[0]["val_acc"] in {10.0 * k for k in range(11)}  # 10 images
    with pytest.raises(ValueError, match="evaluate got no batches"):  # without a split the test set is used
        Run(cfg, tmp_path / "b", log=lambda m: None).train(lambda: no_test)
