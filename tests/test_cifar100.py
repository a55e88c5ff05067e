"""CIFAR-100: its official archive and folder, the numpy format, the download, and a run that
trains, evaluates and reports with 100 classes; datasets are never mixed."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import lzma
import tarfile

import numpy as np
import pytest

from archbench.analysis.compare import read_predictions
from archbench.cli import main
from archbench.data import datasets, sources
from archbench.data.datasets import CIFAR100
from archbench.errors import ArchbenchError
from conftest import SAMPLE_DIR, make_official, make_official100, needs_sample, synthetic100
from test_download import Server
from tiny_model import register

SMALL = ["--batch-size", "50", "--device", "cpu", "--quiet", "--no-verify-data", "--epochs", "1"]


def test_the_class_table_has_the_100_fine_classes_in_label_order():
    assert CIFAR100.num_classes == 100 and len(set(CIFAR100.classes)) == 100
    assert list(CIFAR100.classes) == sorted(CIFAR100.classes)  # the meta file lists them alphabetically
    assert (CIFAR100.classes[0], CIFAR100.classes[30], CIFAR100.classes[99]) == ("apple", "dolphin", "worm")


@pytest.mark.parametrize("archive", [False, True])
def test_official_folder_and_archive_read_the_fine_labels(tmp_path, archive):
    path, d = make_official100(tmp_path, archive=archive)
    got = sources.load_dataset(str(path), verify=False, ds=CIFAR100)
    assert got.dataset == "cifar100" and got.num_classes == 100
    np.testing.assert_array_equal(got.x_train, d.x_train)
    np.testing.assert_array_equal(got.y_train, d.y_train)  # fine labels, not the coarse ones
    np.testing.assert_array_equal(got.x_test, d.x_test)
    np.testing.assert_array_equal(got.y_test, d.y_test)


def test_the_official_md5s_are_checked(tmp_path):
    path, _ = make_official100(tmp_path, archive=True)
    with pytest.raises(ArchbenchError, match=r"MD5 checksum .* does not match the expected eb9058c3a382ffc7106e4002"):
        sources.load_dataset(str(path), ds=CIFAR100)
    folder, _ = make_official100(tmp_path / "f")
    with pytest.raises(ArchbenchError, match=r"cifar-100-python/train: MD5 checksum"):
        sources.load_dataset(str(folder), ds=CIFAR100)


def test_a_cifar10_batch_is_not_a_cifar100_file(tmp_path):
    folder = tmp_path / "cifar-100-python"
    c10, _ = make_official(tmp_path / "c10")
    folder.mkdir()
    for name in ("train", "test"):  # CIFAR-10 batches under CIFAR-100's names: 'labels', no 'fine_labels'
        (folder / name).write_bytes((c10 / "data_batch_1").read_bytes())
    with pytest.raises(ArchbenchError, match=r"no 'fine_labels' entry .*not a CIFAR-100 batch"):
        sources.load_dataset(str(folder), verify=False, ds=CIFAR100)


def _npz_folder(root, d):
    root.mkdir(parents=True)
    for name, arrays in (
        ("train-0", {"x_train": d.x_train, "y_train": d.y_train}),
        ("test", {"x_test": d.x_test, "y_test": d.y_test}),
    ):
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        (root / f"{name}.npz.xz").write_bytes(lzma.compress(buf.getvalue()))
    return root


def test_the_numpy_format_holds_cifar100_and_is_searched_in_its_own_places(tmp_path, monkeypatch):
    d = synthetic100()
    folder = _npz_folder(tmp_path / "c100", d)
    got = sources.load_dataset(str(folder), ds=CIFAR100)
    np.testing.assert_array_equal(got.y_train, d.y_train)
    assert got.dataset == "cifar100"
    with pytest.raises(ArchbenchError, match=r"labels range over 0\.\.99, CIFAR-10's are 0\.\.9"):
        sources.load_dataset(str(folder))  # read as CIFAR-10
    monkeypatch.chdir(tmp_path)
    places = [str(p) for _, p in sources.candidate_dirs(None, CIFAR100)[0]]
    assert places[1].endswith("shared/data/cifar100") and places[2].endswith("cifar100")


@needs_sample
@pytest.mark.parametrize("with_train", [True, False])
def test_cifar10_read_as_cifar100_is_refused(with_train):
    """Also when only the test split is read (eval): 100 test images all labelled 0..9 are CIFAR-10."""
    with pytest.raises(
        ArchbenchError, match=r"all have labels 0\.\.9, but CIFAR-100 has 100 classes: this looks like CIFAR-10"
    ):
        sources.load_dataset(str(SAMPLE_DIR), ds=CIFAR100, with_train=with_train)


def test_cifar100_read_as_cifar10_names_the_flag(tmp_path):
    folder = _npz_folder(tmp_path / "c100", synthetic100())
    with pytest.raises(
        ArchbenchError, match=r"0\.\.99, CIFAR-10's are 0\.\.9; .*\(if it is CIFAR-100, pass --dataset cifar100\)"
    ):
        sources.load_dataset(str(folder))


def test_a_subset_smaller_than_the_class_count_is_refused(tmp_path, capsys):
    register()
    archive, _ = make_official100(tmp_path / "data", archive=True)
    argv = ["train", "tiny", "--dataset", "cifar100", "--data-dir", str(archive), "--out", str(tmp_path / "o"), *SMALL]
    assert main([*argv, "--train-subset", "40"]) == 1
    assert "--train-subset of 40 images cannot hold one image of each of the 100 classes" in capsys.readouterr().err


def test_a_missing_cifar100_is_downloaded_from_its_own_url(tmp_path, monkeypatch, capsys):
    archive, d = make_official100(tmp_path / "made", archive=True)
    body = archive.read_bytes()
    with tarfile.open(archive) as tar:
        md5s = {n: hashlib.md5(tar.extractfile(f"cifar-100-python/{n}").read()).hexdigest() for n in ("train", "test")}
    stand_in = dataclasses.replace(CIFAR100, archive_md5=hashlib.md5(body).hexdigest(), file_md5=md5s)
    monkeypatch.setitem(datasets.DATASETS, "cifar100", stand_in)
    server = Server(body)
    try:
        monkeypatch.setenv("ARCHBENCH_CACHE", str(tmp_path / "cache"))
        monkeypatch.setenv("ARCHBENCH_CIFAR100_URL", server.url)
        monkeypatch.delenv("ARCHBENCH_OFFLINE")
        monkeypatch.chdir(tmp_path)
        got = sources.load_dataset(None, ds=datasets.get("cifar100"))
    finally:
        server.stop()
    assert server.requests == 1
    assert (tmp_path / "cache" / "cifar100" / "cifar-100-python.tar.gz").read_bytes() == body
    assert "CIFAR-100 not found; downloading" in capsys.readouterr().err
    np.testing.assert_array_equal(got.y_test, d.y_test)


def test_a_run_trains_evaluates_and_reports_with_100_classes(tmp_path, capsys):
    register()
    archive, d = make_official100(tmp_path / "data", archive=True)
    out = tmp_path / "out"
    args = ["--dataset", "cifar100", "--data-dir", str(archive), "--out", str(out), "--val-split", "100"]
    assert main(["compare", "tiny", "--seeds", "0", "1", *args, *SMALL]) == 0
    run = out / "tiny" / "seed0"
    assert json.loads((run / "config.json").read_text())["dataset"] == "cifar100"
    pred = read_predictions(run, 100)
    assert pred["best_logits"].shape == (100, 100)  # the held-out validation images, 100 logits each
    assert sorted(np.bincount(pred["label"], minlength=100)) == [1] * 100  # one image per class held out
    report = (out / "report.md").read_text()
    assert "| aquarium_fish |" in report and "| worm |" in report  # the per-class table, all 100 rows
    assert report.count("\n| ") >= 100
    assert "94.99" not in report  # the CIFAR-10 study's figures are not put beside CIFAR-100 runs
    assert (out / "confusion.png").is_file()


def test_runs_of_two_datasets_are_never_mixed(tmp_path, capsys):
    register()
    c10, _ = make_official(tmp_path / "c10", archive=True)
    c100, _ = make_official100(tmp_path / "c100", archive=True)
    out = tmp_path / "out"
    assert main(["train", "tiny", "--data-dir", str(c10), "--out", str(out), *SMALL]) == 0
    capsys.readouterr()
    before = (out / "tiny" / "last.pt").read_bytes()
    argv = ["compare", "tiny", "--dataset", "cifar100", "--data-dir", str(c100), "--out", str(out), *SMALL]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "tiny was trained on cifar10, not cifar100: runs of two datasets are never mixed" in err
    assert err.count("\n") == 1
    assert (out / "tiny" / "last.pt").read_bytes() == before
    assert (
        main(["train", "tiny", "--dataset", "cifar100", "--data-dir", str(c100), "--out", str(tmp_path / "o2"), *SMALL])
        == 0
    )
    capsys.readouterr()
    assert main(["eval", str(out / "tiny"), str(tmp_path / "o2" / "tiny"), "--no-verify-data"]) == 1
    assert "trained on different datasets (cifar10, cifar100)" in capsys.readouterr().err


def test_the_landscapes_default_images_hold_every_class():
    import torch

    from archbench.analysis.landscape import Settings, resolve

    assert resolve(Settings(), torch.device("cpu"), 100).images == 100
    assert resolve(Settings(), torch.device("cpu")).images == 30  # CIFAR-10 keeps the CPU default
    with pytest.raises(ArchbenchError, match="--images 30: must be at least 100"):
        resolve(Settings(images=30), torch.device("cpu"), 100)


def test_an_official_cifar100_folder_without_the_flag_names_it(tmp_path):
    folder, _ = make_official100(tmp_path)
    with pytest.raises(ArchbenchError, match=r"CIFAR-10 not found .*but CIFAR-100 is there; pass --dataset cifar100"):
        sources.load_dataset(str(folder))
