"""``archbench --version`` and ``archbench env``: what a user pastes into a bug report."""

from __future__ import annotations

import subprocess

import pytest
import torch

from archbench import __version__
from archbench.cli import main
from conftest import REPO, make_official


def env_lines(capsys, *args) -> dict[str, str]:
    assert main(["env", *args]) == 0
    rows = [line.split(":", 1) for line in capsys.readouterr().out.splitlines()]
    return {k: v.strip() for k, v in rows}


def test_version_names_the_release_and_the_commit(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"archbench {__version__}")
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:  # run from a checkout: the commit is named
        assert f"(git {head.stdout.strip()}" in out
    else:
        assert out == f"archbench {__version__}"


def test_env_reports_versions_devices_data_and_cache(capsys, tmp_path, monkeypatch):
    folder, _ = make_official(tmp_path / "d")
    rows = env_lines(capsys, "--data-dir", str(folder))
    assert rows["archbench"].startswith(__version__)
    assert rows["torch"] == torch.__version__
    assert rows["CUDA"].endswith(f"{torch.cuda.device_count()} device(s) visible")
    assert rows["devices"].startswith("cpu: ")
    assert rows["CIFAR-10"] == f"found: python-folder at {folder.resolve()}"
    assert rows["cache"].endswith(": writable")
    assert {"python", "platform", "torchvision", "cuDNN", "network", "trackers"} <= set(rows)


def test_env_says_where_missing_data_would_be_fetched(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ARCHBENCH_DATA", raising=False)
    cache = tmp_path / "cache"
    monkeypatch.setenv("ARCHBENCH_CACHE", str(cache))
    rows = env_lines(capsys)  # the tests' environment forbids the network
    assert rows["CIFAR-10"].startswith("not found (tried ") and "would stop" in rows["CIFAR-10"]
    assert rows["network"].startswith("off")
    monkeypatch.delenv("ARCHBENCH_OFFLINE")
    rows = env_lines(capsys)
    url = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    assert f"downloads {url} (170 MB) into {cache / 'cifar10'}" in rows["CIFAR-10"]
    assert rows["cache"] == f"{cache} (from ARCHBENCH_CACHE): writable"
    assert not cache.exists()  # looking leaves no trace


def test_env_flags_an_unwritable_cache(capsys, tmp_path, monkeypatch):
    (tmp_path / "file").write_text("in the way")
    monkeypatch.setenv("ARCHBENCH_CACHE", str(tmp_path / "file" / "cache"))
    rows = env_lines(capsys)
    assert "NOT writable" in rows["cache"] and "is a file" in rows["cache"]


def test_env_reports_an_unclear_offline_variable_instead_of_failing(capsys, monkeypatch):
    monkeypatch.setenv("ARCHBENCH_OFFLINE", "maybe")
    rows = env_lines(capsys)
    assert rows["network"].startswith("unknown: ARCHBENCH_OFFLINE='maybe' is neither on nor off")
    assert "torch" in rows
