"""Fetching CIFAR-10 when no place holds it: once, into the per-user cache, checked, atomic.

A stand-in for the official archive (tiny, made here) is served by an HTTP server on
127.0.0.1 that the test starts and stops; nothing reaches any other address. The expected
MD5s are replaced by the stand-in's, so everything else runs as it does for a user.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

import archbench.data.sources as sources
from archbench.data import datasets, fetch
from archbench.data.datasets import CIFAR10
from archbench.errors import ArchbenchError
from conftest import REPO, make_official


class Server:
    """Serves one archive at /cifar-10-python.tar.gz; ``mode`` decides how."""

    def __init__(self, body: bytes):
        self.body, self.mode, self.requests = body, "ok", 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests += 1
                body = server.body
                if server.mode == "missing":
                    self.send_error(404)
                    return
                if server.mode == "corrupt":
                    body = body[:100] + bytes([body[100] ^ 0xFF]) + body[101:]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.mode == "truncated":  # the promised length, then the connection closes
                    body = body[: len(body) // 2]
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/cifar-10-python.tar.gz"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def stop(self):
        if self.thread.is_alive():
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join()


def stand_in(tmp_path: Path, per_batch: int = 20):
    """A fake official archive, its MD5s, and the arrays it holds."""
    path, data = make_official(tmp_path / "made", per_batch=per_batch, archive=True)
    body = path.read_bytes()
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        batches = {
            Path(m.name).name: hashlib.md5(tar.extractfile(m).read()).hexdigest()
            for m in tar.getmembers()
            if Path(m.name).name in CIFAR10.file_md5
        }
    return body, {"archive": hashlib.md5(body).hexdigest(), "batches": batches}, data


@pytest.fixture
def served(tmp_path, monkeypatch):
    """A fresh cache, downloads allowed, the stand-in served on 127.0.0.1 and its MD5s expected."""
    body, md5s, data = stand_in(tmp_path)
    server = Server(body)
    cache = tmp_path / "cache"
    monkeypatch.setenv("ARCHBENCH_CACHE", str(cache))
    monkeypatch.setenv("ARCHBENCH_CIFAR10_URL", server.url)
    monkeypatch.delenv("ARCHBENCH_OFFLINE")
    monkeypatch.delenv("ARCHBENCH_DATA", raising=False)
    stand_in_md5s = dataclasses.replace(CIFAR10, archive_md5=md5s["archive"], file_md5=md5s["batches"])
    monkeypatch.setitem(datasets.DATASETS, "cifar10", stand_in_md5s)
    work = tmp_path / "fresh" / "work"  # no ./data, no ../shared/data/cifar10
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    yield server, cache, data, md5s
    server.stop()


def files_in(folder: Path) -> list[str]:
    """The files under ``folder`` (folders themselves do not count)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir()) if folder.exists() else []


def test_fresh_cache_downloads_once_then_reuses(served, capsys):
    server, cache, made, _ = served
    d = sources.load_dataset(None)
    assert server.requests == 1
    np.testing.assert_array_equal(d.x_train, made.x_train)
    np.testing.assert_array_equal(d.y_test, made.y_test)
    assert d.checksums == "official MD5s matched" and str(cache / "cifar10") in d.source
    assert files_in(cache) == ["cifar10/cifar-10-python.tar.gz"]  # no temp file, nothing unpacked
    err = capsys.readouterr().err
    assert "downloading" in err and "MD5 matches" in err
    sources.load_dataset(None)
    assert server.requests == 1  # found in the cache: no second download
    assert sources.find(None) == sources.Found("python-archive", cache / "cifar10" / "cifar-10-python.tar.gz")


@pytest.mark.parametrize(
    "mode, message",
    [
        ("corrupt", r"has MD5 [0-9a-f]{32}, not the official archive's [0-9a-f]{32}; it is damaged or not CIFAR-10"),
        ("truncated", r"(ended after \d[\d,]* of [\d,]+ bytes|failed \(IncompleteRead)"),
        ("missing", r"failed \(HTTPError: Not Found\)"),
    ],
)
def test_a_bad_download_is_one_error_and_leaves_nothing(served, mode, message):
    server, cache, _, _ = served
    server.mode = mode
    with pytest.raises(ArchbenchError, match=message) as e:
        sources.load_dataset(None)
    assert "\n" not in str(e.value) and "nothing was kept" in str(e.value)
    assert files_in(cache) == []
    server.mode = "ok"  # the next try starts clean and succeeds
    assert len(sources.load_dataset(None).y_test) == 20
    assert server.requests == 2


def test_unreachable_server_is_one_error(served):
    server, cache, _, _ = served
    server.stop()  # the port is closed now: connection refused
    with pytest.raises(
        ArchbenchError,
        match=r"downloading CIFAR-10 from http://127\.0\.0\.1:\d+/\S+ \(from ARCHBENCH_CIFAR10_URL\) failed",
    ):
        sources.load_dataset(None)
    assert files_in(cache) == []


@pytest.mark.parametrize("how", ["flag", "env"])
def test_offline_keeps_the_not_found_error_and_sends_nothing(served, monkeypatch, how):
    server, cache, _, _ = served
    if how == "env":
        monkeypatch.setenv("ARCHBENCH_OFFLINE", "1")
    with pytest.raises(ArchbenchError) as e:
        sources.load_dataset(None, offline=how == "flag")
    msg = str(e.value)
    assert msg.startswith("CIFAR-10 not found (tried ./data = ") and "downloading is off" in msg
    assert "../shared/data/cifar10" in msg and str(cache / "cifar10") in msg and "--data-dir" in msg
    assert server.requests == 0 and files_in(cache) == []


def test_an_unclear_offline_variable_is_refused(served, monkeypatch):
    monkeypatch.setenv("ARCHBENCH_OFFLINE", "sometimes")
    with pytest.raises(ArchbenchError, match="ARCHBENCH_OFFLINE='sometimes' is neither on nor off"):
        sources.load_dataset(None)
    assert served[0].requests == 0


def test_a_named_place_is_fetched_into_only_with_download(served, tmp_path):
    server, cache, _, _ = served
    named = tmp_path / "mine"
    with pytest.raises(ArchbenchError, match=r"CIFAR-10 not found \(tried --data-dir = .*mine\);"):
        sources.load_dataset(str(named))
    assert server.requests == 0
    sources.load_dataset(str(named), download_missing=True)
    assert files_in(named) == ["cifar-10-python.tar.gz"] and files_in(cache) == []


def test_offline_with_download_says_downloading_is_off(served, tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHBENCH_OFFLINE", "1")
    with pytest.raises(ArchbenchError, match=r"tried --data-dir = .*mine\) and downloading is off"):
        sources.load_dataset(str(tmp_path / "mine"), download_missing=True)
    assert served[0].requests == 0


def test_a_damaged_archive_in_the_cache_says_to_delete_it(served):
    server, cache, _, _ = served
    sources.load_dataset(None)
    archive = cache / "cifar10" / "cifar-10-python.tar.gz"
    archive.write_bytes(archive.read_bytes()[:1000])  # e.g. a copy cut short by hand
    for verify in (True, False):
        with pytest.raises(ArchbenchError) as e:
            sources.load_dataset(None, verify=verify)
        msg = str(e.value)
        assert msg.startswith("the downloaded copy in archbench's cache is damaged: ") and "\n" not in msg
        assert msg.endswith(f"delete {archive} and the next command downloads it again")
        assert "--no-verify-data" not in msg
    archive.unlink()
    sources.load_dataset(None)
    assert server.requests == 2


def test_stale_temp_files_of_a_killed_download_are_removed(served):
    _, cache, _, _ = served
    folder = cache / "cifar10"
    folder.mkdir(parents=True)
    (folder / ".cifar-10-python.tar.gz.0badf00d.tmp").write_bytes(b"half an archive")
    sources.load_dataset(None)
    assert files_in(cache) == ["cifar10/cifar-10-python.tar.gz"]


def test_two_processes_at_once_download_once(served):
    server, cache, _, _ = served
    results, errors = [], []

    def load():
        try:
            results.append(len(sources.load_dataset(None).y_train))
        except Exception as e:  # reported below, not swallowed
            errors.append(e)

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == [] and results == [100, 100]
    assert server.requests == 1  # the second waited for the lock, then used the archive
    assert files_in(cache) == ["cifar10/cifar-10-python.tar.gz"]  # the lock file is gone too


def test_an_unwritable_cache_is_one_error_naming_it(served, monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    monkeypatch.setenv("ARCHBENCH_CACHE", str(blocker / "cache"))
    with pytest.raises(ArchbenchError) as e:
        sources.load_dataset(None)
    msg = str(e.value)
    assert re.match(r"could not create the folder .*a-file/cache/cifar10: .*is a file, not a folder; ", msg), msg
    assert msg.endswith("free 170 MB there, set ARCHBENCH_CACHE to another folder, or pass --data-dir DIR --download")
    assert served[0].requests == 0


def test_a_cache_that_fills_up_names_the_cache_setting(served, monkeypatch):
    import errno

    from archbench import io_utils

    def full(path, write):
        raise io_utils.os_error("write", path, OSError(errno.ENOSPC, "No space left on device"))

    monkeypatch.setattr(fetch, "atomic_write_with", full)
    with pytest.raises(ArchbenchError, match=r"No space left on device; free 170 MB there, set ARCHBENCH_CACHE"):
        sources.load_dataset(None)


def test_where_file_locks_fail_the_download_goes_ahead_unlocked(served, monkeypatch, capsys):
    import fcntl

    def no_locks(fd, op):
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    assert len(sources.load_dataset(None).y_test) == 20
    assert "file locks do not work in" in capsys.readouterr().err
    assert files_in(served[1]) == ["cifar10/cifar-10-python.tar.gz"]


def test_platform_cache_folders(monkeypatch, tmp_path):
    monkeypatch.delenv("ARCHBENCH_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(sys, "platform", "linux")
    assert fetch.data_cache_dir() == tmp_path / "xdg" / "archbench" / "cifar10"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")  # the XDG spec: relative paths are invalid
    assert fetch.user_cache_dir() == tmp_path / ".cache" / "archbench"
    monkeypatch.setattr(sys, "platform", "darwin")
    assert fetch.user_cache_dir() == tmp_path / "Library" / "Caches" / "archbench"
    monkeypatch.setenv("ARCHBENCH_CACHE", "~/elsewhere")
    assert fetch.user_cache_dir() == tmp_path / "elsewhere"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ARCHBENCH_CACHE", "relative")  # made absolute: it must not move with the working folder
    assert fetch.user_cache_dir() == tmp_path / "relative"


@pytest.mark.slow
def test_readme_first_command_in_a_fresh_folder_downloads_and_runs_end_to_end(served, tmp_path):
    """The quick start where no ./data and no ../shared exist, scaled down to CI's minutes:
    the real CLI in a subprocess, the archive fetched from the 127.0.0.1 server."""
    server, cache, _, md5s = served
    server.body, md5s, _ = stand_in(tmp_path / "big", per_batch=40)  # 200 train / 40 test images
    md5_file = tmp_path / "md5s.json"
    md5_file.write_text(json.dumps(md5s))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    args = ["compare", "--epochs", "1", "--train-subset", "40", "--test-subset", "20", "--batch-size", "20"]
    p = subprocess.run(
        [sys.executable, str(REPO / "tests" / "download_driver.py"), str(md5_file), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr
    assert server.requests == 1 and "downloading" in p.stderr
    assert "Δ final accuracy (resnet18 − vgg19_bn)" in p.stdout
    assert (Path("runs") / "report.html").is_file()
    assert files_in(cache) == ["cifar10/cifar-10-python.tar.gz"]
