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

import tiny_model
from archbench.train import checkpoint, history
from archbench.train.lock import run_lock
from conftest import REPO, SAMPLE_DIR, make_official, needs_sample, synthetic

DRIVER = Path(__file__).with_name("fault_driver.py")
EPOCHS = 4  # 40 images / batch 16 = 3 steps per epoch
MODEL = tiny_model.NAME  # the machinery under test does not depend on the architecture; see tiny_model.py
ARGS = [
    "train",
    MODEL,
    "--epochs",
    str(EPOCHS),
    "--milestones",
    "2",
    "--train-subset",
    "40",
    "--test-subset",
    "20",
    "--batch-size",
    "16",
    "--device",
    "cpu",
    "--quiet",
    "--data-dir",
    str(SAMPLE_DIR),
]
TIMING = ("train_seconds", "eval_seconds", "epoch_seconds")
UMASK = 0o022  # the usual one: files 0644, folders 0755


@pytest.fixture(autouse=True)
def tiny_registered(monkeypatch):
    """In this process too (``fault_driver.py`` registers it in the CLI's subprocesses)."""
    from archbench.models.registry import MODELS

    monkeypatch.setitem(MODELS, tiny_model.NAME, tiny_model.SPEC)


def run(out: Path, fault: str = "none", *extra: str, popen: bool = False):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    cmd = [sys.executable, str(DRIVER), fault, *ARGS, "--out", str(out), *extra]
    if popen:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, umask=UMASK)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, umask=UMASK)


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
    assert all(torch.equal(oa["state"][k]["momentum_buffer"], ob["state"][k]["momentum_buffer"]) for k in ob["state"])
    assert (a / "gradflow.csv").read_bytes() == (b / "gradflow.csv").read_bytes()
    assert not list(a.glob(".*.tmp")), "temp files of killed writes were left behind"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    if not SAMPLE_DIR.is_dir():
        pytest.skip(f"CIFAR-10 sample not found at {SAMPLE_DIR} (../shared is absent)")
    out = tmp_path_factory.mktemp("straight")
    p = run(out)
    assert p.returncode == 0, p.stderr
    return out / MODEL


RESNET18_ARGS = [ARGS[0], "resnet18", *ARGS[2:]]


@pytest.fixture(scope="module")
def uninterrupted_resnet18(tmp_path_factory):
    """A real model's run, for the test whose checkpoints must be big enough to fill a disk."""
    if not SAMPLE_DIR.is_dir():
        pytest.skip(f"CIFAR-10 sample not found at {SAMPLE_DIR} (../shared is absent)")
    out = tmp_path_factory.mktemp("straight18")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    p = subprocess.run(
        [sys.executable, str(DRIVER), "none", *RESNET18_ARGS, "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        umask=UMASK,
    )
    assert p.returncode == 0, p.stderr
    return out / "resnet18"


@pytest.mark.slow
@needs_sample
def test_killed_at_chosen_moments_resumes_bit_identical(tmp_path, uninterrupted):
    rng = random.Random(20261128)
    faults = [
        "write:best.pt:1",  # during the first checkpoint write, before its rename
        "partial:last.pt:1",  # half-way through writing last.pt
        f"step:{rng.randint(4, 6)}",  # mid-epoch, after epoch 1 is checkpointed
        "append:history.jsonl:1",  # after the CSV row, before the JSON-lines row
        f"write:last.pt:{rng.randint(1, 2)}",
    ]
    out = tmp_path / "out"
    for i, fault in enumerate(faults):
        p = run(out, fault, *(["--resume"] if i else []))
        assert p.returncode == -signal.SIGKILL, f"fault {fault} did not fire: {p.stdout}{p.stderr}"
    p = run(out, "none", "--resume")
    assert p.returncode == 0, p.stderr
    assert_same_run(out / MODEL, uninterrupted)


@pytest.mark.slow
@needs_sample
def test_killed_at_random_times_resumes_bit_identical(tmp_path, uninterrupted):
    rng = random.Random(7)
    out = tmp_path / "out"
    for i in range(3):
        proc = run(out, "none", *(["--resume"] if i else []), popen=True)
        time.sleep(rng.uniform(2.0, 5.0))  # the tiny model's run takes about 5 s, start-up included
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    p = run(out, "none", "--resume")
    assert p.returncode == 0, p.stderr
    assert_same_run(out / MODEL, uninterrupted)


def _snapshot(d: Path) -> dict[str, bytes]:
    """Every file's bytes (a released lock leaves no file behind)."""
    return {f.name: f.read_bytes() for f in d.iterdir() if f.is_file()}


@needs_sample
def test_corrupt_checkpoint_is_refused_and_nothing_is_touched(tmp_path, uninterrupted):
    d = tmp_path / "out" / MODEL
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
    d = tmp_path / "out" / MODEL
    shutil.copytree(uninterrupted, d)
    before = _snapshot(d)
    p = run(tmp_path / "out", "none", "--resume", "--seed", "3")
    assert p.returncode == 1 and "another protocol (seed: 0 in the run folder vs 3 now)" in p.stderr
    ck = checkpoint.load(d / "last.pt")
    ck["model_name"] = "vgg19_bn"
    torch.save(ck, d / "last.pt")
    p = run(tmp_path / "out", "none", "--resume")
    assert p.returncode == 1 and f"last.pt is for model 'vgg19_bn', not '{MODEL}'" in p.stderr
    ck["model_name"] = MODEL
    ck["model"]["fc.weight"] = torch.zeros(100, 16)  # a 100-class head
    torch.save(ck, d / "last.pt")
    p = run(tmp_path / "out", "none", "--resume")
    assert p.returncode == 1 and f"does not fit model '{MODEL}'" in p.stderr and "fc.weight" in p.stderr
    del before["last.pt"]
    assert {k: v for k, v in _snapshot(d).items() if k != "last.pt"} == before


@needs_sample
def test_second_process_on_a_run_folder_is_refused_and_kill_frees_it(tmp_path):
    d = tmp_path / "out" / MODEL
    d.mkdir(parents=True)
    with run_lock(d):
        p = run(tmp_path / "out")
        assert p.returncode == 1 and "is in use by another archbench process (pid" in p.stderr
        assert f"pid {os.getpid()}" in p.stderr
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from archbench.train.lock import run_lock\n"
            f"with run_lock({str(d)!r}):\n print('locked', flush=True); time.sleep(60)",
        ],
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
        stdout=subprocess.PIPE,
        text=True,
    )
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
    assert f"[{MODEL}] epoch 2: loss became non-finite (nan or inf) at step 2 of the epoch" in p.stderr
    assert "keeps the checkpoint of epoch 1" in p.stderr
    d = out / MODEL
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
    d = out / MODEL
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
    assert "could not create the folder" in p.stderr and "a part of the path is a file" in p.stderr
    assert "choose another path" in p.stderr


@needs_sample
def test_damaged_history_is_repaired_from_the_checkpoint(tmp_path, uninterrupted):
    d = tmp_path / "out" / MODEL
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
    p = subprocess.run(
        [
            sys.executable,
            str(DRIVER),
            "none",
            "--debug",
            *ARGS,
            "--out",
            str(tmp_path / "o"),
            "--data-dir",
            str(tmp_path / "nothing"),
        ],
        env=env,
        capture_output=True,
        text=True,
    )
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
    files = {
        "train-0.npz.xz": dict(x_train=d.x_train, y_train=d.y_train),
        "test.npz.xz": dict(x_test=d.x_test, y_test=d.y_test, lossless=np.ones(20, bool)),
    }
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
    "wrong checksum": (lambda r: (_npz_folder(r), _break_checksum(r)), "test.npz.xz: SHA-256 checksum"),
    "wrong shapes": (
        lambda r: _npz_folder(r, x_train=np.zeros((40, 32, 32), np.uint8)),
        "train-0.npz.xz: images have shape (40, 32, 32)",
    ),
    "labels out of range": (lambda r: _npz_folder(r, y_test=np.arange(20) + 3), "test.npz.xz: labels range over 3..22"),
    "truncated file": (lambda r: (_npz_folder(r), _truncate(r)), "train-0.npz.xz: not a readable .npz.xz"),
    "truncated archive": (_truncated_archive, "cifar-10-python.tar.gz: not a readable .tar.gz"),
}


@pytest.mark.parametrize("fault", list(DATA_FAULTS))
def test_each_data_fault_is_one_line_naming_the_file_and_fix(fault, tmp_path, capsys):
    from archbench.cli import main

    make, expected = DATA_FAULTS[fault]
    make(tmp_path / "data")
    verify = [] if fault != "truncated archive" else ["--no-verify-data"]
    code = main(
        [
            "train",
            "resnet18",
            "--epochs",
            "1",
            "--device",
            "cpu",
            "--quiet",
            *verify,
            "--data-dir",
            str(tmp_path / "data"),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and expected in err, err
    assert any(fix in err for fix in ("fresh copy", "download it again", "copy the complete", "copy it again"))
    assert not list((tmp_path / "out").rglob("*.pt")) and not list((tmp_path / "out").rglob("config.json"))


# ---------------------------------------------------------------- the file system, signals, other data


def _main(capsys, *argv: str) -> tuple[int, str, str]:
    from archbench.cli import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _one_line(err: str) -> bool:
    return err.count("\n") == 1 and err.startswith("archbench: error: ") and "Traceback" not in err


def _private_mount_namespace(script: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run a shell script as root of a private user and mount namespace, where it can mount a
    small tmpfs (a real file system that fills up, or turns read-only) without privileges."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed: no private mount namespace for a small tmpfs")
    probe = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs in a private namespace here ({probe.stderr.strip()[:120]}); "
            f"a real full or read-only file system cannot be made"
        )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        umask=UMASK,
    )


def _cli(args: list[str], out: str, tag: str) -> str:
    """A shell line running the CLI with ``args``; its exit code, stdout and stderr go to ``out``/tag.*"""
    quoted = " ".join(f"'{a}'" for a in args)
    return f"{sys.executable} {DRIVER} none {quoted} >{out}/{tag}.out 2>{out}/{tag}.err; echo $? >{out}/{tag}.rc"


def _result(folder: Path, tag: str) -> tuple[int, str, str]:
    return (
        int((folder / f"{tag}.rc").read_text()),
        (folder / f"{tag}.out").read_text(),
        (folder / f"{tag}.err").read_text(),
    )


@needs_sample
def test_a_really_full_disk_is_one_line_and_the_run_resumes_bit_identical(tmp_path, uninterrupted_resnet18):
    """torch.save reports a full disk as a RuntimeError; it must read like any other full disk."""
    mnt, logs, copy = tmp_path / "mnt", tmp_path / "logs", tmp_path / "copy"
    mnt.mkdir(), logs.mkdir()
    args = RESNET18_ARGS[:-2] + ["--data-dir", str(SAMPLE_DIR), "--out", f"{mnt}/out"]
    # resnet18's best.pt is 45 MB and last.pt 90 MB: 160 MB holds epoch 1, not epoch 2's temp files.
    script = "; ".join(
        [
            f"mount -t tmpfs -o size=160m tmpfs {mnt}",
            _cli(args, logs, "full"),
            f"ls -A {mnt}/out/resnet18 >{logs}/after_full.ls",
            f"{sys.executable} -c \"import sys; sys.path.insert(0, '{REPO / 'src'}'); "
            f"from archbench.train import checkpoint; "
            f"print(checkpoint.load('{mnt}/out/resnet18/last.pt')['epoch'])\" >{logs}/epoch_kept",
            f"mount -o remount,size=400m {mnt}",
            _cli(args + ["--resume"], logs, "resumed"),
            f"cp -a {mnt}/out/resnet18 {copy}",
        ]
    )
    p = _private_mount_namespace(script)
    assert p.returncode == 0, p.stderr
    code, _, err = _result(logs, "full")
    assert code == 1 and _one_line(err), err
    assert "could not write" in err and "No space left on device; free disk space" in err
    assert "RuntimeError" not in err and "unexpected pos" not in err
    left = (logs / "after_full.ls").read_text().split()
    assert not [f for f in left if f.endswith(".tmp")] and ".lock" not in left, left
    assert (logs / "epoch_kept").read_text().strip() == "1"
    code, _, err = _result(logs, "resumed")
    assert code == 0, err
    assert_same_run(copy, uninterrupted_resnet18)


@pytest.mark.slow
@needs_sample
def test_read_only_output_is_one_line_for_every_writing_command_and_bench_fails_first(tmp_path, uninterrupted):
    mnt, logs = tmp_path / "mnt", tmp_path / "logs"
    mnt.mkdir(), logs.mkdir()
    data = ["--data-dir", str(SAMPLE_DIR)]
    commands = {
        "train": ARGS[:-2] + data + ["--out", f"{mnt}/out"],
        "resume": ARGS[:-2] + data + ["--out", f"{mnt}/runs", "--resume"],  # a finished run, now read-only
        "bench": [
            "bench",
            "resnet18",
            "--synthetic",
            "--device",
            "cpu",
            "--train-subset",
            "40",
            "--test-subset",
            "20",
            "--json",
            f"{mnt}/bench/results.json",
        ],
        "eval": ["eval", f"{mnt}/runs/{MODEL}", *data, "--device", "cpu", "--out", f"{mnt}/eval"],
        "plot": ["plot", f"{mnt}/runs/{MODEL}", str(uninterrupted), "--out", f"{mnt}/plots"],
    }
    script = "; ".join(
        [
            f"mount -t tmpfs -o size=200m tmpfs {mnt}",
            f"mkdir {mnt}/runs",
            f"cp -a {uninterrupted} {mnt}/runs/{MODEL}",
            f"mount -o remount,ro {mnt}",
            *(_cli(args, logs, tag) for tag, args in commands.items()),
            f"ls -A {mnt}/runs/{MODEL} >{logs}/run.ls",
        ]
    )
    p = _private_mount_namespace(script)
    assert p.returncode == 0, p.stderr
    for tag in commands:
        code, out, err = _result(logs, tag)
        assert code == 1 and _one_line(err), (tag, err)
        assert "Read-only file system; write to a writable place (e.g. another --out)" in err, (tag, err)
    assert "bench:" not in _result(logs, "bench")[1], "bench timed the models before checking --json"
    assert sorted((logs / "run.ls").read_text().split()) == sorted(f.name for f in uninterrupted.iterdir())


def test_names_beyond_the_file_system_limits_are_one_line(tmp_path, capsys):
    for out in (tmp_path / "new" / ("n" * 300), tmp_path.joinpath("new", *["d" * 200] * 25)):  # NAME_MAX, PATH_MAX
        code, _, err = _main(capsys, "train", "resnet18", "--epochs", "1", "--out", str(out))
        assert code == 1 and _one_line(err), err
        assert "File name too long; choose a shorter path or name" in err
        assert not (tmp_path / "new").exists(), "a failed start left folders behind"
    name = "b" * 250 + ".json"  # a legal name, though its temp file's would not be
    from archbench.io_utils import atomic_write_text

    atomic_write_text(tmp_path / name, "{}")
    assert (tmp_path / name).read_text() == "{}" and not list(tmp_path.glob(".*.tmp"))


def test_unwritable_json_or_out_of_bench_eval_and_plot_fail_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    for argv in (
        ["bench", "resnet18", "--synthetic", "--device", "cpu", "--json", f"{blocker}/b.json"],
        ["eval", str(tmp_path), "--test-subset", "20", "--out", f"{blocker}/eval"],
        ["plot", str(tmp_path), "--out", f"{blocker}/plots"],
    ):
        code, out, err = _main(capsys, *argv)
        assert code == 1 and _one_line(err), err
        assert "a part of the path is a file, not a folder" in err and out == "", (argv, out)
    code, _, err = _main(capsys, "bench", "resnet18", "--synthetic", "--json", str(tmp_path))
    assert code == 1 and "it is a folder; name a file" in err


@needs_sample
def test_files_follow_the_umask_like_any_other_program(uninterrupted, tmp_path):
    modes = {f.name: f.stat().st_mode & 0o777 for f in uninterrupted.iterdir()}
    assert set(modes.values()) == {0o644}, modes  # written under umask 022
    from archbench.io_utils import atomic_write_text

    old = os.umask(0o077)
    try:
        atomic_write_text(tmp_path / "private.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "private.txt").stat().st_mode & 0o777 == 0o600


@pytest.mark.slow
@needs_sample
def test_sigterm_during_a_checkpoint_write_finishes_it_says_so_and_resumes_bit_identical(tmp_path, uninterrupted):
    out = tmp_path / "out"
    p = run(out, "term:last.pt:2")
    assert p.returncode == 143, p.stderr
    assert p.stderr.count("\n") == 1 and "terminated (SIGTERM); finished epochs are saved" in p.stderr
    d = out / MODEL
    assert not list(d.glob(".*.tmp")) and not (d / ".lock").exists()
    # The write under way when the signal came landed. On a busy machine the writer can merge
    # finished epochs, so the second write of last.pt may carry epoch 3 rather than 2.
    written = int(p.stdout.rsplit("SIGTERM while writing epoch ", 1)[1].split()[0])
    assert written >= 2 and checkpoint.load(d / "last.pt")["epoch"] == written, p.stdout
    assert [r["epoch"] for r in history.read(d)] == list(range(1, written + 1))
    p = run(out, "none", "--resume")
    assert p.returncode == 0, p.stderr
    assert_same_run(d, uninterrupted)


@needs_sample
def test_zero_byte_checkpoints_are_called_damaged(tmp_path, uninterrupted, capsys):
    d = tmp_path / "out" / MODEL
    shutil.copytree(uninterrupted, d)
    (d / "last.pt").write_bytes(b"")
    (d / "best.pt").write_bytes(b"")
    before = _snapshot(d)
    code, _, err = _main(capsys, *ARGS, "--out", str(tmp_path / "out"), "--resume")
    assert code == 1 and _one_line(err), err
    assert f"checkpoint {d / 'last.pt'} is unreadable (EOFError; 0 bytes); it is truncated or damaged" in err
    code, _, err = _main(capsys, "eval", str(d), "--data-dir", str(SAMPLE_DIR), "--device", "cpu")
    assert code == 1 and _one_line(err) and f"{d / 'best.pt'} is unreadable" in err, err
    assert "delete the run folder (or best.pt and last.pt) to train the run again" in err  # not just best.pt
    assert _snapshot(d) == before


@needs_sample
def test_a_checkpoint_with_missing_or_mistyped_fields_is_refused(tmp_path, uninterrupted, capsys):
    d = tmp_path / "out" / MODEL
    shutil.copytree(uninterrupted, d)
    good = checkpoint.load(d / "last.pt")
    for field, value in (("optimizer", None), ("epoch", "4"), ("rng", {}), ("history", [1, 2])):
        torch.save({**good, field: value}, d / "last.pt")
        code, _, err = _main(capsys, *ARGS, "--out", str(tmp_path / "out"), "--resume")
        assert code == 1 and _one_line(err), err
        assert f"last.pt: field {field!r} should be" in err and "damaged" in err
    three = {**good, "epoch": 3, "history": good["history"][:3]}  # a run to continue
    for change, message in (
        ({"history": [{}] * 3}, "history record 1: field 'epoch' is missing"),
        ({"epoch": 10**30}, "but 3 history records"),
        (
            {"epoch": 7, "history": [{**r, "epoch": n} for n, r in enumerate(good["history"] * 2, 1)][:7]},
            "epoch 7 of a run planned for 4",
        ),
        ({"best_acc": float("nan")}, "with accuracy nan"),
        ({"data": "zzz"}, "field 'data' should be the fingerprint"),
        ({"optimizer": {"state": {}, "param_groups": []}}, "its optimizer state does not fit the model"),
    ):
        torch.save({**three, **change}, d / "last.pt")
        code, _, err = _main(capsys, *ARGS, "--out", str(tmp_path / "out"), "--resume")
        assert code == 1 and _one_line(err) and message in err, (change.keys(), err)
        assert "damaged — delete it to start the run again" in err


def test_a_failed_start_leaves_no_folder_and_no_lock_behind(tmp_path, capsys):
    out = tmp_path / "new" / "out"
    code, _, err = _main(capsys, *ARGS[:-2], "--data-dir", str(tmp_path / "nothing"), "--out", str(out))
    assert code == 1 and _one_line(err) and "CIFAR-10" in err
    assert not (tmp_path / "new").exists(), list((tmp_path / "new").rglob("*"))


@needs_sample
def test_a_run_is_only_continued_or_reused_on_the_data_it_started_with(tmp_path, uninterrupted, capsys):
    other, _ = make_official(tmp_path / "other")  # as many images per class, other pixels and labels
    out = tmp_path / "out"
    p = run(out, "write:last.pt:2")  # killed as epoch 2 is saved: epoch 1 has landed, a run to continue
    assert p.returncode == -signal.SIGKILL
    d = out / MODEL
    # The killed process's lock (unlocked) and half-written temp file: any next command removes them.
    before = {name: raw for name, raw in _snapshot(d).items() if name != ".lock" and not name.endswith(".tmp")}
    code, _, err = _main(
        capsys, *ARGS[:-2], "--data-dir", str(other), "--no-verify-data", "--out", str(out), "--resume"
    )
    assert code == 1 and _one_line(err), err
    assert f"{d} was trained on other data (train images and test images differ)" in err
    assert str(SAMPLE_DIR) in err and str(other) in err and "pass the run's data with --data-dir" in err
    assert _snapshot(d) == before  # config.json still records what the first epoch saw
    reused = tmp_path / "reused"
    shutil.copytree(uninterrupted, reused / MODEL)
    compare = [
        "compare",
        "plain18",
        MODEL,
        *ARGS[2:-2],
        "--data-dir",
        str(other),
        "--no-verify-data",
        "--out",
        str(reused),
    ]
    before = _snapshot(reused / MODEL)
    code, _, err = _main(capsys, *compare)
    assert code == 1 and _one_line(err) and f"{MODEL} was trained on other data" in err, err
    assert _snapshot(reused / MODEL) == before
    assert not (reused / "plain18").exists(), "a model was trained before the reused run's data was checked"


@needs_sample
def test_vgg_with_batch_size_1_diverges_in_validation_and_exits_1(tmp_path, capsys):
    """Batch norm over one 1x1 feature map has no variance: running statistics turn NaN."""
    code, _, err = _main(
        capsys,
        "train",
        "vgg19_bn",
        "--batch-size",
        "1",
        "--train-subset",
        "10",
        "--test-subset",
        "10",
        "--epochs",
        "1",
        "--device",
        "cpu",
        "--quiet",
        "--data-dir",
        str(SAMPLE_DIR),
        "--out",
        str(tmp_path),
    )
    assert code == 1 and _one_line(err), err
    assert "[vgg19_bn] epoch 1: the validation loss is nan (non-finite); the run stopped" in err
    assert json.loads((tmp_path / "vgg19_bn" / "divergence.json").read_text())["epoch"] == 1


@needs_sample
def test_a_closed_output_pipe_stops_with_one_line_not_a_file_error(uninterrupted, tmp_path):
    run_dir = tmp_path / "r"
    shutil.copytree(uninterrupted, run_dir)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    p = subprocess.run(
        f"{sys.executable} {DRIVER} none plot {run_dir} | true",
        shell=True,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.stderr in ("", "archbench: stopped: the program reading its output exited\n"), p.stderr
    assert "could not access" not in p.stderr and "Traceback" not in p.stderr
