"""Shared fixtures: where the project's data lives, tiny synthetic datasets, fake archives."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from archbench.data.sources import CifarData

# Before any test module imports mlflow: MLflow 3 starts a thread on import that fetches its
# telemetry settings from the internet, unless this is set (tests never use the network).
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["DO_NOT_TRACK"] = "true"
# Before any test imports Ray, which reads these once: every Ray process of the tests listens
# on 127.0.0.1 only, and reports no usage statistics.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SAMPLE_DIR = SHARED_DATA / "cifar10-sample"
REAL_DIR = SHARED_DATA / "cifar10"

needs_sample = pytest.mark.skipif(
    not SAMPLE_DIR.is_dir(), reason=f"CIFAR-10 sample not found at {SAMPLE_DIR} (../shared is absent)"
)
needs_real = pytest.mark.skipif(
    not REAL_DIR.is_dir(), reason=f"real CIFAR-10 not found at {REAL_DIR} (../shared is absent)"
)


# Fixtures that train real models end to end (a compare of several models and seeds, a
# resnet18 run big enough to fill a disk) or start a Ray cluster: every test using one is slow.
SLOW_FIXTURES = {"compared", "smoke", "uninterrupted_resnet18", "cluster"}


def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True, scope="session")
def no_network_and_a_private_cache(tmp_path_factory):
    """No test reaches the network or the user's own cache: downloads are off unless a test
    turns them on against its own 127.0.0.1 server, and the cache is a fresh folder.
    Set in the environment, so the CLI run in a subprocess inherits it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ARCHBENCH_OFFLINE", "1")
        mp.setenv("ARCHBENCH_CACHE", str(tmp_path_factory.mktemp("cache")))
        mp.delenv("ARCHBENCH_CIFAR10_URL", raising=False)
        for proxy in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
            mp.delenv(proxy, raising=False)  # the tests' own server on 127.0.0.1 is reached directly
        mp.setenv("no_proxy", "127.0.0.1,localhost")
        mp.setenv("NO_PROXY", "127.0.0.1,localhost")
        yield


def synthetic(n_train: int = 60, n_test: int = 20, seed: int = 0, exact_every: int | None = None) -> CifarData:
    """Random images with balanced labels; optionally every k-th test image marked not exact."""
    rng = np.random.default_rng(seed)
    exact = None
    if exact_every:
        exact = np.ones(n_test, bool)
        exact[::exact_every] = False
    return CifarData(
        rng.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8),
        np.arange(n_train, dtype=np.int64) % 10,
        rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8),
        np.arange(n_test, dtype=np.int64) % 10,
        exact,
        "synthetic",
    )


@pytest.fixture
def tiny_data() -> CifarData:
    return synthetic()


def batch_pickle(x_hwc: np.ndarray, y: np.ndarray) -> bytes:
    """One batch in the official python format: CHW-planar rows, list of int labels."""
    data = x_hwc.transpose(0, 3, 1, 2).reshape(len(x_hwc), -1)
    return pickle.dumps(
        {
            "batch_label": "fake",
            "labels": [int(v) for v in y],
            "data": data,
            "filenames": [f"{i}.png" for i in range(len(y))],
        },
        protocol=2,
    )


def write_official(root: Path, folder_name: str, archive_name: str, files: dict[str, bytes], archive: bool) -> Path:
    """``files`` as the official python version lays them out: ``root/FOLDER/``, or with
    ``archive`` ``root/ARCHIVE`` holding ``FOLDER/``."""
    root.mkdir(parents=True, exist_ok=True)
    if archive:
        path = root / archive_name
        with tarfile.open(path, "w:gz") as tar:
            for name, raw in files.items():
                info = tarfile.TarInfo(f"{folder_name}/{name}")
                info.size = len(raw)
                tar.addfile(info, io.BytesIO(raw))
        return path
    folder = root / folder_name
    folder.mkdir()
    for name, raw in files.items():
        (folder / name).write_bytes(raw)
    return folder


def make_official(root: Path, per_batch: int = 20, archive: bool = False, seed: int = 1) -> tuple[Path, CifarData]:
    """A tiny fake ``cifar-10-batches-py`` folder (or its .tar.gz) and the arrays it holds."""
    d = synthetic(5 * per_batch, per_batch, seed=seed)
    files = {
        f"data_batch_{i + 1}": batch_pickle(
            d.x_train[i * per_batch : (i + 1) * per_batch], d.y_train[i * per_batch : (i + 1) * per_batch]
        )
        for i in range(5)
    }
    files["test_batch"] = batch_pickle(d.x_test, d.y_test)
    files["batches.meta"] = pickle.dumps({"label_names": ["x"] * 10}, protocol=2)
    return write_official(root, "cifar-10-batches-py", "cifar-10-python.tar.gz", files, archive), d


def synthetic100(per_class_train: int = 2, per_class_test: int = 1, seed: int = 2) -> CifarData:
    """Random images with 100 balanced fine labels: CIFAR-100's shape, in miniature."""
    rng = np.random.default_rng(seed)
    n_train, n_test = 100 * per_class_train, 100 * per_class_test
    return CifarData(
        rng.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8),
        rng.permutation(np.arange(n_train, dtype=np.int64) % 100),
        rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8),
        np.arange(n_test, dtype=np.int64) % 100,
        None,
        "synthetic",
        dataset="cifar100",
    )


def cifar100_pickle(x_hwc: np.ndarray, fine: np.ndarray) -> bytes:
    """One file of the official CIFAR-100 python version: fine and coarse labels, CHW-planar rows."""
    return pickle.dumps(
        {
            "filenames": [f"{i}.png" for i in range(len(fine))],
            "batch_label": "fake",
            "fine_labels": [int(v) for v in fine],
            "coarse_labels": [int(v) // 5 for v in fine],  # not CIFAR-100's grouping; archbench ignores it
            "data": x_hwc.transpose(0, 3, 1, 2).reshape(len(x_hwc), -1),
        },
        protocol=2,
    )


def make_official100(root: Path, archive: bool = False, data: CifarData | None = None) -> tuple[Path, CifarData]:
    """A tiny fake ``cifar-100-python`` folder (or ``cifar-100-python.tar.gz``) and the arrays it holds."""
    d = data if data is not None else synthetic100()
    files = {
        "train": cifar100_pickle(d.x_train, d.y_train),
        "test": cifar100_pickle(d.x_test, d.y_test),
        "meta": pickle.dumps({"fine_label_names": ["x"] * 100, "coarse_label_names": ["y"] * 20}, protocol=2),
    }
    return write_official(root, "cifar-100-python", "cifar-100-python.tar.gz", files, archive), d
