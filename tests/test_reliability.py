"""Fault injection: kills at any moment, damaged checkpoints, locks, divergence, full disks.

Each test runs the real CLI in a subprocess (``fault_driver.py`` injects the fault) and
checks the README's reliability promises: nothing finished is lost, a resumed run ends
bit-identical to an uninterrupted one, and every failure is one clear line and a
non-zero exit code.
"""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from archbench.train import checkpoint, history
from archbench.train.lock import run_lock

from conftest import REPO, SAMPLE_DIR, make_official, needs_sample, synthetic


DRIVER = Path(__file__).with_name("fault_driver.py")
EPOCHS = 4  # 40 images / batch 16 = 3 steps per epoch
ARGS = ["train", "resnet18", "--epochs", str(EPOCHS), "--milestones", "2", "--train-subset", "40",
        "--test-subset", "20", "--batch-size", "16", "--device", "cpu", "--quiet",
        "--data-dir", str(SAMPLE_DIR)]
TIMING = ("train_seconds", "eval_seconds", "epoch_seconds")


def run(out: Path, fault: str = "none", *extra: str, popen: bool = False):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    cmd = [sys.executable, str(DRIVER), fault, *ARGS, "--out", str(out), *extra]
    if popen:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def numbers(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in history.read(run_dir)]


def assert_same_run(a: Path, b: Path) -> None:
    assert numbers(a) == numbers(b)
    csv_epochs = [line.split(",")[0] for line in (a / "history.csv").read_text().splitlines()[1:]]
    assert csv_epochs == [str(e) for e in range(1, EPOCHS + 1)], "a history.csv row lost or duplicated"
    for name in ("last.pt", "best.pt"):
        sa, sb = checkpoint.load(a / name)["model"], checkpoint.load(b / name)["model"]
        assert all(torch.equal(sa[k], sb[k]) for k in sb), f"{name} differs"
    oa, ob = checkpoint.load(a / "last.pt")["optimizer"], checkpoint.load(b / "last.pt")["optimizer"]
    assert all(torch.equal(oa["state"][k]["momentum_buffer"], ob["state"][k]["momentum_buffer"])
               for k in ob["state"])
    assert (a / "gradflow.csv").read_bytes() == (b / "gradflow.csv").read_bytes()
    assert not list(a.glob(".*.tmp")), "temp files of killed writes were left behind"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    if not SAMPLE_DIR.is_dir():
        pytest.skip(f"CIFAR-10 sample not found at {SAMPLE_DIR} (../shared is absent)")
    out = tmp_path_factory.mktemp("straight")
    p = run(out)
    assert p.returncode == 0, p.stderr
    return out / "resnet18"


@needs_sample
def test_killed_at_chosen_moments_resumes_bit_identical(tmp_path, uninterrupted):
    rng = random.Random(20261128)
    faults = [
        "write:best.pt:1",               # during the first checkpoint write, before its rename
        "partial:last.pt:1",             # half-way through writing last.pt
        f"step:{rng.randint(4, 6)}",     # mid-epoch, after epoch 1 is checkpointed
        "append:history.jsonl:1",        # after the CSV row, before the JSON-lines row
        f"write:last.pt:{rng.randint(1, 2)}",
    ]
    out = tmp_path / "out"
    for i, fault in enumerate(faults):
        p = run(out, fault, *(["--resume"] if i else []))
        assert p.returncode == -signal.SIGKILL, f"fault {fault} did not fire: {p.stdout}{p.stderr}"
    p = run(out, "none", "--resume")
    assert p.returncode == 0, p.stderr
    assert_same_run(out / "resnet18", uninterrupted)


@needs_sample
def test_killed_at_random_times_resumes_bit_identical(tmp_path, uninterrupted):
    rng = random.Random(7)
    out = tmp_path / "out"
    for i in range(3):
        proc = run(out, "none", *(["--resume"] if i else []), popen=True)
        time.sleep(rng.uniform(2.0, 7.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    p = run(out, "none", "--resume")
    assert p.returncode == 0, p.stderr
    assert_same_run(out / "resnet18", uninterrupted)


def _snapshot(d: Path) -> dict[str, bytes]:
    """Every file's bytes, except the lock file (it records the last holder's pid)."""
    return {f.name: f.read_bytes() for f in d.iterdir() if f.is_file() and f.name != ".lock"}


@needs_sample
def test_corrupt_checkpoint_is_refused_and_nothing_is_touched(tmp_path, uninterrupted):
    d = tmp_path / "out" / "resnet18"
    shutil.copytree(uninterrupted, d)
    raw = (d / "last.pt").read_bytes()
    (d / "last.pt").write_bytes(raw[: len(raw) // 3])
    before = _snapshot(d)
    p = run(tmp_path / "out", "none", "--resume")
    assert p.returncode == 1
    assert f"checkpoint {d / 'last.pt'} is unreadable" in p.stderr and p.stderr.count("\n") == 1
    assert _snapshot(d) == before


@needs_sample
def test_checkpoint_of_another_model_or_protocol_is_refused(tmp_path, uninterrupted):
    d = tmp_path / "out" / "resnet18"
    shutil.copytree(uninterrupted, d)
    before = _snapshot(d)
    p = run(tmp_path / "out", "none", "--resume", "--seed", "3")
    assert p.returncode == 1 and "another protocol (seed: 0 in the run folder vs 3 now)" in p.stderr
    ck = checkpoint.load(d / "last.pt")
    ck["model_name"] = "vgg19_bn"
    torch.save(ck, d / "last.pt")
    p = run(tmp_path / "out", "none", "--resume")
    assert p.returncode == 1 and "last.pt is for model 'vgg19_bn', not 'resnet18'" in p.stderr
    ck["model_name"] = "resnet18"
    ck["model"]["fc.weight"] = torch.zeros(100, 512)  # a 100-class head
    torch.save(ck, d / "last.pt")
    p = run(tmp_path / "out", "none", "--resume")
    assert p.returncode == 1 and "does not fit model 'resnet18'" in p.stderr and "fc.weight" in p.stderr
    del before["last.pt"]
    assert {k: v for k, v in _snapshot(d).items() if k != "last.pt"} == before


@needs_sample
def test_second_process_on_a_run_folder_is_refused_and_kill_frees_it(tmp_path):
    d = tmp_path / "out" / "resnet18"
    d.mkdir(parents=True)
    with run_lock(d):
        p = run(tmp_path / "out")
        assert p.returncode == 1 and "is in use by another archbench process (pid" in p.stderr
        assert f"pid {os.getpid()}" in p.stderr
    holder = subprocess.Popen([sys.executable, "-c",
                               "import sys, time; from archbench.train.lock import run_lock\n"
                               f"with run_lock({str(d)!r}):\n print('locked', flush=True); time.sleep(60)"],
                              env={**os.environ, "PYTHONPATH": str(REPO / "src")}, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with run_lock(d):  # the killed holder did not leave the folder locked
        pass


@needs_sample
def test_divergence_stops_with_exit_1_keeping_checkpoint_and_history(tmp_path):
    out = tmp_path / "out"
    p = run(out, "nan:5")  # the 2nd step of epoch 2
    assert p.returncode == 1 and p.stderr.count("\n") == 1
    assert "[resnet18] epoch 2: loss became non-finite (nan or inf) at step 2 of the epoch" in p.stderr
    assert "keeps the checkpoint of epoch 1" in p.stderr
    d = out / "resnet18"
    assert checkpoint.load(d / "last.pt")["epoch"] == 1
    assert [r["epoch"] for r in history.read(d)] == [1]
    assert (d / "history.csv").read_text().count("\n") == 2
    assert json.loads((d / "divergence.json").read_text())["epoch"] == 2
    again = run(out, "none", "--resume")  # recorded, so reported, not trained into again
    assert again.returncode == 1 and "diverged at epoch 2, step 2 when it was trained" in again.stderr
    assert checkpoint.load(d / "last.pt")["epoch"] == 1


@needs_sample
def test_disk_full_is_a_clear_error_and_earlier_files_survive(tmp_path, uninterrupted):
    out = tmp_path / "out"
    p = run(out, "enospc:last.pt:2")
    assert p.returncode == 1 and p.stderr.count("\n") == 1
    assert "could not write" in p.stderr and "last.pt: No space left on device" in p.stderr
    d = out / "resnet18"
    assert checkpoint.load(d / "last.pt")["epoch"] == 1
    assert [r["epoch"] for r in history.read(d)] == [1]
    assert not list(d.glob(".*.tmp"))
    p = run(out, "none", "--resume")  # space freed: the run completes as if nothing happened
    assert p.returncode == 0, p.stderr
    assert_same_run(d, uninterrupted)


@needs_sample
def test_unwritable_output_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    p = run(blocker / "out")
    assert p.returncode == 1 and p.stderr.count("\n") == 1
    assert "cannot create the output folder" in p.stderr and "choose another --out" in p.stderr


@needs_sample
def test_damaged_history_is_repaired_from_the_checkpoint(tmp_path, uninterrupted):
    d = tmp_path / "out" / "resnet18"
    shutil.copytree(uninterrupted, d)
    (d / "history.csv").write_text((d / "history.csv").read_text()[:-30])  # torn last line
    (d / "history.jsonl").write_text("{not json\n")
    p = run(tmp_path / "out", "none", "--resume")
    assert p.returncode == 0 and "finished run found" in p.stdout
    assert (d / "history.csv").read_bytes() == (uninterrupted / "history.csv").read_bytes()
    assert (d / "history.jsonl").read_bytes() == (uninterrupted / "history.jsonl").read_bytes()


@needs_sample
def test_debug_flag_shows_the_traceback(tmp_path):
    p = run(tmp_path / "o", "none", "--data-dir", str(tmp_path / "nothing"))
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    p = subprocess.run([sys.executable, "-m", "archbench", "--debug", *ARGS, "--out", str(tmp_path / "o"),
                        "--data-dir", str(tmp_path / "nothing")], env=env, capture_output=True, text=True)
    assert p.returncode == 1 and "Traceback" in p.stderr and "CIFAR-10 not found" in p.stderr


@needs_sample
def test_checkpoints_never_hold_pickled_code(uninterrupted):
    """weights_only loading succeeds, i.e. the files hold tensors and plain containers only."""
    for name in ("last.pt", "best.pt"):
        ck = torch.load(uninterrupted / name, weights_only=True)
        assert json.dumps(ck["config"])  # the config is plain JSON-able data


def _npz_folder(root: Path, **overrides) -> Path:
    """A small dataset in the numpy format, with SHA256SUMS; ``overrides`` replace arrays."""
    import hashlib
    import io
    import lzma

    d = synthetic(40, 20)
    files = {"train-0.npz.xz": dict(x_train=d.x_train, y_train=d.y_train),
             "test.npz.xz": dict(x_test=d.x_test, y_test=d.y_test, lossless=np.ones(20, bool))}
    root.mkdir(parents=True)
    sums = []
    for name, arrays in files.items():
        arrays.update({k: v for k, v in overrides.items() if k in arrays})
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        raw = lzma.compress(buf.getvalue())
        (root / name).write_bytes(raw)
        sums.append(f"{hashlib.sha256(raw).hexdigest()}  {name}")
    (root / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    return root


def _break_checksum(root: Path) -> None:
    (root / "test.npz.xz").write_bytes((root / "test.npz.xz").read_bytes()[:-1] + b"\0")


def _truncate(root: Path) -> None:
    raw = (root / "train-0.npz.xz").read_bytes()
    (root / "train-0.npz.xz").write_bytes(raw[: len(raw) // 2])
    (root / "SHA256SUMS").unlink()


def _truncated_archive(root: Path) -> Path:
    archive, _ = make_official(root, archive=True)
    archive.write_bytes(archive.read_bytes()[:300])
    return archive


DATA_FAULTS = {
    "missing file": (lambda r: (_npz_folder(r), (r / "test.npz.xz").unlink()), "missing test.npz.xz; copy"),
    "wrong checksum": (lambda r: (_npz_folder(r), _break_checksum(r)),
                       "test.npz.xz: SHA-256 checksum"),
    "wrong shapes": (lambda r: _npz_folder(r, x_train=np.zeros((40, 32, 32), np.uint8)),
                     "train-0.npz.xz: images have shape (40, 32, 32)"),
    "labels out of range": (lambda r: _npz_folder(r, y_test=np.arange(20) + 3),
                            "test.npz.xz: labels range over 3..22"),
    "truncated file": (lambda r: (_npz_folder(r), _truncate(r)), "train-0.npz.xz: not a readable .npz.xz"),
    "truncated archive": (_truncated_archive, "cifar-10-python.tar.gz: not a readable .tar.gz"),
}


@pytest.mark.parametrize("fault", list(DATA_FAULTS))
def test_each_data_fault_is_one_line_naming_the_file_and_fix(fault, tmp_path, capsys):
    from archbench.cli import main

    make, expected = DATA_FAULTS[fault]
    make(tmp_path / "data")
    verify = [] if fault != "truncated archive" else ["--no-verify-data"]
    code = main(["train", "resnet18", "--epochs", "1", "--device", "cpu", "--quiet", *verify,
                 "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and expected in err, err
    assert any(fix in err for fix in ("fresh copy", "download it again", "copy the complete", "copy it again"))
    assert not list((tmp_path / "out").rglob("*.pt")) and not list((tmp_path / "out").rglob("config.json"))
