"""Finding and reading CIFAR-10 in each supported form, and the errors for bad copies."""

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from archbench.data import sources
from archbench.data.sources import load_dataset, read_npz_xz, read_python_archive, read_python_folder
from archbench.data.subsets import balanced_indices
from archbench.errors import ArchbenchError
from conftest import REAL_DIR, SAMPLE_DIR, make_official, needs_real, needs_sample


@needs_sample
def test_sample_numpy_folder_loads_with_checksums():
    d = read_npz_xz(SAMPLE_DIR)
    assert d.x_train.shape == (500, 32, 32, 3) and d.x_train.dtype == np.uint8
    assert d.x_test.shape == (100, 32, 32, 3) and d.y_test.dtype == np.int64
    assert np.bincount(d.y_train).tolist() == [50] * 10
    assert d.test_exact is not None and d.test_exact.all()


@needs_sample
def test_numpy_folder_checksum_mismatch_names_file(tmp_path):
    copy = tmp_path / "c"
    shutil.copytree(SAMPLE_DIR, copy)
    os.chmod(copy / "SHA256SUMS", 0o644)
    sums = (copy / "SHA256SUMS").read_text().replace("test.npz.xz", "x").replace("  x", "  test.npz.xz")
    lines = [("0" * 64 + "  test.npz.xz") if l.endswith("test.npz.xz") else l for l in sums.splitlines()]
    (copy / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    with pytest.raises(ArchbenchError, match=r"test\.npz\.xz: SHA-256 checksum .* does not match"):
        read_npz_xz(copy)
    assert read_npz_xz(copy, verify=False).x_test.shape == (100, 32, 32, 3)


@needs_sample
def test_truncated_numpy_file_is_a_clear_error(tmp_path):
    copy = tmp_path / "c"
    copy.mkdir()
    raw = (SAMPLE_DIR / "test.npz.xz").read_bytes()
    (copy / "test.npz.xz").write_bytes(raw[: len(raw) // 2])
    shutil.copy(SAMPLE_DIR / "train-0.npz.xz", copy)
    with pytest.raises(ArchbenchError, match="test.npz.xz: not a readable .npz.xz file.*truncated"):
        read_npz_xz(copy)


@needs_real
def test_real_cifar10_loads_in_official_order():
    d = load_dataset(str(REAL_DIR))
    assert d.x_train.shape == (50000, 32, 32, 3) and d.x_test.shape == (10000, 32, 32, 3)
    assert d.y_train[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert np.bincount(d.y_train).tolist() == [5000] * 10
    assert np.bincount(d.y_test).tolist() == [1000] * 10
    assert int(d.test_exact.sum()) == 9980
    mean = d.x_train.reshape(-1, 3).mean(0) / 255
    np.testing.assert_allclose(mean, [0.4914, 0.4822, 0.4465], atol=1e-4)


def test_official_python_folder_and_archive_read_back_exactly(tmp_path):
    folder, expected = make_official(tmp_path / "f")
    archive, expected_a = make_official(tmp_path / "a", archive=True)
    for got, want in (
        (read_python_folder(folder, verify=False), expected),
        (read_python_archive(archive, verify=False), expected_a),
    ):
        np.testing.assert_array_equal(got.x_train, want.x_train)  # CHW rows -> HWC images
        np.testing.assert_array_equal(got.y_train, want.y_train)
        np.testing.assert_array_equal(got.x_test, want.x_test)
        assert got.test_exact is None


def test_official_format_is_checked_against_official_md5s(tmp_path):
    folder, _ = make_official(tmp_path / "f")
    with pytest.raises(ArchbenchError, match=r"data_batch_1: MD5 checksum .* does not match .*c99cafc1"):
        read_python_folder(folder)
    archive, _ = make_official(tmp_path / "a", archive=True)
    with pytest.raises(ArchbenchError, match=r"cifar-10-python.tar.gz: MD5 checksum .*c58f3010"):
        read_python_archive(archive)


def test_official_format_errors_for_missing_and_truncated_files(tmp_path):
    folder, _ = make_official(tmp_path / "f")
    (folder / "data_batch_3").unlink()
    with pytest.raises(ArchbenchError, match="missing data_batch_3"):
        read_python_folder(folder, verify=False)
    archive, _ = make_official(tmp_path / "a", archive=True)
    archive.write_bytes(archive.read_bytes()[:500])
    with pytest.raises(ArchbenchError, match="not a readable .tar.gz"):
        read_python_archive(archive, verify=False)


def test_batch_pickles_cannot_run_code(tmp_path):
    folder, _ = make_official(tmp_path / "f")

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    (folder / "data_batch_1").write_bytes(pickle.dumps({"data": Evil(), "labels": []}, protocol=2))
    with pytest.raises(ArchbenchError, match="data_batch_1: not a readable CIFAR-10 batch.*refusing"):
        read_python_folder(folder, verify=False)
    assert not (tmp_path / "pwned").exists()


def test_labels_out_of_range_are_rejected(tmp_path):
    from conftest import batch_pickle

    folder, d = make_official(tmp_path / "f")
    (folder / "test_batch").write_bytes(batch_pickle(d.x_test, d.y_test + 5))
    with pytest.raises(ArchbenchError, match=r"test_batch: labels range over 5..14, CIFAR-10.s are 0..9"):
        load_dataset(str(folder), verify=False)


def test_search_order_data_dir_then_env_then_local_then_shared_then_cache(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ARCHBENCH_DATA", raising=False)
    a, _ = make_official(tmp_path / "A")
    b, _ = make_official(tmp_path / "B", archive=True)
    local, _ = make_official(tmp_path / "data")
    shared, _ = make_official(tmp_path / "shared" / "data" / "cifar10")
    assert sources.locate(str(tmp_path / "A")).path == a
    monkeypatch.setenv("ARCHBENCH_DATA", str(tmp_path / "B"))
    assert sources.locate(None) == sources.Found("python-archive", b)
    assert sources.locate(str(tmp_path / "A")).path == a  # the flag beats the variable
    monkeypatch.delenv("ARCHBENCH_DATA")
    assert sources.locate(None).path == Path("data") / "cifar-10-batches-py"
    shutil.rmtree(tmp_path / "data")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # ../shared/data/cifar10 is relative to where archbench runs
    assert sources.locate(None).path.resolve() == shared.resolve()
    cached, _ = make_official(tmp_path / "cache" / "cifar10", archive=True)  # where a download lands
    monkeypatch.setenv("ARCHBENCH_CACHE", str(tmp_path / "cache"))
    assert sources.locate(None).path.resolve() == shared.resolve()  # the project's mirror comes first
    shutil.rmtree(tmp_path / "shared")
    assert sources.locate(None) == sources.Found("python-archive", cached)


def test_nothing_found_lists_places_and_ways(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ARCHBENCH_DATA", raising=False)
    with pytest.raises(ArchbenchError) as e:
        load_dataset(None, offline=True)
    msg = str(e.value)
    assert "./data" in msg and "../shared/data/cifar10" in msg
    assert "--data-dir" in msg and "ARCHBENCH_DATA" in msg and "--download" in msg and "\n" not in msg
    monkeypatch.setenv("ARCHBENCH_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(ArchbenchError, match="ARCHBENCH_DATA = .*nowhere"):
        load_dataset(None)


def test_balanced_subsets_are_deterministic_and_balanced():
    labels = np.array([i % 10 for i in range(1000)])
    idx = balanced_indices(labels, 25, 10)
    assert len(idx) == 25 and np.all(np.diff(idx) > 0)
    assert np.bincount(labels[idx], minlength=10).tolist() == [3] * 5 + [2] * 5
    np.testing.assert_array_equal(idx, balanced_indices(labels, 25, 10))
    with pytest.raises(ArchbenchError, match="--train-subset of 2000 images is not possible"):
        balanced_indices(labels, 2000, 10, "--train-subset")
