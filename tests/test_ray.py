"""compare --executor ray on a two-node Ray cluster on this machine (127.0.0.1 only).

Every test shares one ``ray.cluster_utils.Cluster`` of two 1-CPU nodes, started with the
environment that keeps Ray on the loopback interface, without its dashboard or usage
statistics; workers register the test models through ``--ray-setup``. The grid's numbers
are checked against the same runs trained by ``--executor local``, bit for bit (CPU).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from pathlib import Path

import pytest
import torch

import tiny_model
from archbench.analysis.compare import evaluate_run
from archbench.cli import main
from archbench.errors import ArchbenchError
from archbench.models.registry import MODELS
from archbench.scale import folders
from archbench.scale.ray_grid import RayOptions, run_grid
from archbench.scale.task import FINISHED
from archbench.train.runner import Run
from conftest import REPO, make_official

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]')")

TIMING = ("train_seconds", "eval_seconds", "epoch_seconds")
SETUP = "tiny_model.register_all"
GRID = ["tiny", "resnettiny", "--seeds", "0", "1", "--epochs", "3", "--milestones", "2", "--batch-size", "20"]
HOW = ["--device", "cpu", "--quiet", "--no-verify-data"]
SLOW_EPOCHS = 8  # slowtiny: 6 steps of 0.05 s per epoch, so a run lasts seconds and can be stopped mid-way


@pytest.fixture(autouse=True)
def test_models(monkeypatch):
    for spec in (tiny_model.SPEC, tiny_model.SLOW, *tiny_model.TWINS.values()):
        monkeypatch.setitem(MODELS, spec.name, spec)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Two nodes of one CPU each; workers import the test models from tests/ and one torch thread
    each, as the local runs they are compared with."""
    from ray.cluster_utils import Cluster

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # every Ray process on 127.0.0.1
        mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
        mp.setenv(
            "PYTHONPATH", os.pathsep.join([str(REPO / "tests"), str(REPO / "src"), os.environ.get("PYTHONPATH", "")])
        )
        c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
        try:
            c.add_node(num_cpus=1)
            c.wait_for_nodes()
            yield c
        finally:
            c.shutdown()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder, _ = make_official(tmp_path_factory.mktemp("data"), per_batch=24)  # 120 training images
    return folder.parent


@pytest.fixture(scope="module")
def local(tmp_path_factory, data_dir):
    """The grid trained by --executor local, one torch thread (as each Ray task with one CPU)."""
    out = tmp_path_factory.mktemp("local") / "out"
    with one_thread(), pytest.MonkeyPatch.context() as mp:
        for spec in (tiny_model.SPEC, *tiny_model.TWINS.values()):
            mp.setitem(MODELS, spec.name, spec)
        assert main(["compare", *GRID, *HOW, "--data-dir", str(data_dir), "--out", str(out)]) == 0
    return out


class one_thread:
    def __enter__(self):
        self.threads = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.threads)


def ray_args(cluster, data_dir, out, *extra):
    return ["compare", *GRID, *HOW, "--data-dir", str(data_dir), "--out", str(out), "--executor", "ray"] + [
        "--ray-address",
        cluster.address,
        "--ray-setup",
        SETUP,
        *extra,
    ]


def history(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def assert_same_run(a: Path, b: Path) -> None:
    assert history(a) == history(b), (a, b)
    assert (a / "gradflow.csv").read_text() == (b / "gradflow.csv").read_text()
    assert json.loads((a / "final.json").read_text()) == json.loads((b / "final.json").read_text())


RUNS = [f"{m}/seed{s}" for m in ("tiny", "resnettiny") for s in (0, 1)]


def test_the_grid_on_two_nodes_equals_a_local_compare(cluster, data_dir, local, tmp_path, capsys):
    assert cluster.address.startswith("127.0.0.1:")
    out = tmp_path / "out"
    assert main(ray_args(cluster, data_dir, out)) == 0
    printed = capsys.readouterr().out
    assert "ray: 4 runs on 2 node(s) with 2 CPUs and 0 GPUs" in printed
    assert "sent back" not in printed
    for run in RUNS:
        assert_same_run(out / run, local / run)
        assert f"{run}: [{run.split('/')[0]}] epoch   3/3" in printed  # each run's own log lines, labelled
        assert f"{run}: finished" in printed
    for name in ("comparison.md", "comparison.csv"):
        assert (out / name).read_text() == (local / name).read_text(), name
    ours, theirs = (json.loads((d / "comparison.json").read_text()) for d in (out, local))
    assert ours["runs"] == theirs["runs"] and "failed" not in ours
    assert "(Ray: 4 runs as tasks)" in ours["environment"]["device"]
    assert not list(out.glob(".archbench-driver-*")), "the marker file is removed"
    ray.init(address=cluster.address)
    try:
        assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
    finally:
        ray.shutdown()


def test_runs_sent_back_when_workers_do_not_share_the_folder(cluster, data_dir, local, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(ray_args(cluster, data_dir, out, "--ray-files", "return")) == 0
    printed = capsys.readouterr().out
    assert "ray: every run folder is written in a temp folder and sent back here" in printed
    assert "in a temp folder, sent back when done" in printed
    for run in RUNS:
        assert f"{run}: " in printed and "landed in" in printed
        assert_same_run(out / run, local / run)
        kept = {p.relative_to(out / run).as_posix() for p in (out / run).rglob("*") if p.is_file()}
        assert kept == {p.relative_to(local / run).as_posix() for p in (local / run).rglob("*") if p.is_file()}
    assert (out / "comparison.md").read_text() == (local / "comparison.md").read_text()


def slow_grid(out: Path) -> list:
    from archbench.config import Config

    cfg = Config(
        model="slowtiny",
        epochs=SLOW_EPOCHS,
        milestones=(4,),
        batch_size=20,
        device="cpu",
        quiet=True,
        verify_data=False,
    )
    return [(cfg.replace(seed=s), out / f"slowtiny/seed{s}") for s in (0, 1)]


@pytest.fixture(scope="module")
def slow_reference(tmp_path_factory, data_dir):
    """The slow runs trained here, uninterrupted."""
    from archbench.train.runner import load_data

    out = tmp_path_factory.mktemp("slowref")
    with one_thread(), pytest.MonkeyPatch.context() as mp:
        mp.setitem(MODELS, "slowtiny", tiny_model.SLOW)
        mp.setattr(tiny_model.SlowTiny, "STEP_SECONDS", 0.0)  # the pause changes no number
        grid = slow_grid(out)
        data = load_data(grid[0][0].replace(data_dir=str(data_dir)))
        for cfg, run_dir in grid:
            Run(cfg, run_dir, log=lambda line: None).train(lambda: data)
            evaluate_run(run_dir, data, torch.device("cpu"))
    return out, data


def test_a_killed_worker_is_retried_and_the_run_resumes_to_the_same_history(cluster, slow_reference, tmp_path):
    reference, data = slow_reference
    out = tmp_path / "out"
    events, killed = [], []

    def kill_mid_run(label, kind, payload):
        events.append((label, kind, payload))
        if label == "slowtiny/seed0" and kind == "epoch" and payload["epoch"] >= 2 and not killed:
            start = next(p for lbl, k, p in reversed(events) if lbl == label and k == "start")
            os.kill(start["pid"], signal.SIGKILL)
            killed.append(payload["epoch"])

    options = RayOptions(address=cluster.address, cpus_per_run=1, max_retries=2, setup=SETUP)
    outcomes = run_grid(slow_grid(out), data, out, options, log=lambda line: None, on_event=kill_mid_run)
    assert killed, "the run ended before it could be killed"
    assert [o.status for o in outcomes] == [FINISHED, FINISHED]
    starts = [p for lbl, k, p in events if lbl == "slowtiny/seed0" and k == "start"]
    assert len(starts) == 2 and starts[0]["pid"] != starts[1]["pid"]
    resumed = [p for lbl, k, p in events if lbl == "slowtiny/seed0" and k == "log" and "resuming" in p]
    assert resumed, "the retry continued from last.pt, not from scratch"
    for s in (0, 1):
        assert_same_run(out / f"slowtiny/seed{s}", reference / f"slowtiny/seed{s}")


def test_a_lost_node_is_replaced_by_another_and_the_run_resumes_to_the_same_history(cluster, slow_reference, tmp_path):
    reference, data = slow_reference
    out = tmp_path / "out"
    head = cluster.head_node.node_id
    events, removed = [], []

    def remove_its_node(label, kind, payload):
        events.append((label, kind, payload))
        starts = {lbl: p for lbl, k, p in events if k == "start"}
        if kind == "epoch" and payload["epoch"] >= 2 and not removed and starts[label]["node"] != head:
            victim = next(n for n in cluster.list_all_nodes() if n.node_id == starts[label]["node"])
            cluster.remove_node(victim)  # its raylet and workers die, as when a machine goes away
            removed.append(label)

    options = RayOptions(address=cluster.address, max_retries=2, setup=SETUP)
    try:
        outcomes = run_grid(slow_grid(out), data, out, options, log=lambda line: None, on_event=remove_its_node)
    finally:
        if len(cluster.list_all_nodes()) < 2:
            cluster.add_node(num_cpus=1)  # the next tests' two nodes
            cluster.wait_for_nodes()
    assert removed, "no run was on the worker node past its second epoch"
    assert [o.status for o in outcomes] == [FINISHED, FINISHED]
    label = removed[0]
    starts = [p for lbl, k, p in events if lbl == label and k == "start"]
    assert len(starts) == 2 and starts[1]["node"] == head, "retried on the node that is left"
    assert any(lbl == label and k == "log" and "resuming" in p for lbl, k, p in events)
    for s in (0, 1):
        assert_same_run(out / f"slowtiny/seed{s}", reference / f"slowtiny/seed{s}")


def test_ctrl_c_cancels_the_tasks_and_a_later_compare_resumes_them(cluster, slow_reference, tmp_path):
    reference, data = slow_reference
    out = tmp_path / "out"

    def interrupt(label, kind, payload):
        if label == "slowtiny/seed0" and kind == "epoch" and payload["epoch"] >= 2:
            raise KeyboardInterrupt

    options = RayOptions(address=cluster.address, files="return", setup=SETUP)
    with pytest.raises(KeyboardInterrupt):
        run_grid(slow_grid(out), data, out, options, log=lambda line: None, on_event=interrupt)
    saved = [json.loads(l)["epoch"] for l in (out / "slowtiny/seed0/history.jsonl").read_text().splitlines()]
    assert 2 <= saved[-1] < SLOW_EPOCHS, "the cancelled run's finished epochs came back, and it had not finished"
    outcomes = run_grid(slow_grid(out), data, out, options, log=lambda line: None)
    assert [o.status for o in outcomes] == [FINISHED, FINISHED]
    for s in (0, 1):
        assert_same_run(out / f"slowtiny/seed{s}", reference / f"slowtiny/seed{s}")


def test_a_run_that_fails_for_a_fixable_reason_is_not_retried_and_the_report_says_why(
    cluster, data_dir, local, tmp_path, capsys
):
    out = tmp_path / "out"
    shutil.copytree(local / "tiny/seed1", out / "tiny/seed1")
    cfg = json.loads((out / "tiny/seed1/config.json").read_text())
    broken = out / "tiny/seed1/last.pt"
    ckpt = torch.load(broken, weights_only=True)
    ckpt["config"] = {**cfg, "momentum": 0.5}  # a run of another protocol in that folder: compare refuses it
    torch.save(ckpt, broken)
    assert main(ray_args(cluster, data_dir, out)) == 1
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert sum(line.startswith("tiny/seed1: started") for line in lines) == 1, "a refusal is not retried"
    assert any(line.startswith("tiny/seed1: failed — ") and "another protocol" in line for line in lines)
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "1 of 4 runs failed (tiny/seed1:" in err[0] and "run the same compare again" in err[0]
    manifest = json.loads((out / "comparison.json").read_text())
    assert [r["dir"] for r in manifest["runs"]] == ["tiny/seed0", "resnettiny/seed0", "resnettiny/seed1"]
    assert manifest["failed"][0]["dir"] == "tiny/seed1" and "another protocol" in manifest["failed"][0]["reason"]
    assert "tiny seed 1 (tiny/seed1) failed and is left out" in (out / "report.md").read_text()
    for run in ("tiny/seed0", "resnettiny/seed0", "resnettiny/seed1"):
        assert_same_run(out / run, local / run)


def test_options_the_cluster_cannot_meet_are_refused_in_one_line(cluster, data_dir, tmp_path, capsys):
    out = tmp_path / "out"
    for extra, says in (
        (["--gpus-per-run", "1"], "--gpus-per-run 1: no node of the Ray cluster has that many GPUs"),
        (["--cpus-per-run", "4"], "--cpus-per-run 4: no node of the Ray cluster has that many CPUs"),
        (["--gpus-per-run", "1.5"], "--gpus-per-run 1.5: use 0, a fraction of one GPU"),
        (["--max-retries", "-1"], "--max-retries -1: use 0 or more"),
        (
            ["--ray-files", "return", "--mlflow"],
            "is a store in this machine's files, which some Ray workers do not see",
        ),
    ):
        assert main(ray_args(cluster, data_dir, out, *extra)) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0], (extra, err)
        assert not out.exists() or extra[-1] == "--mlflow", "a refusal leaves no folder behind"
    assert not list(out.rglob("history.jsonl")), "nothing trained"
    assert not list(out.glob(".archbench-driver-*"))


def test_without_ray_installed_the_executor_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    out = tmp_path / "out"
    missing_data = tmp_path / "no-data"  # refused before the data is looked for
    assert main(["compare", *GRID, *HOW, "--data-dir", str(missing_data), "--out", str(out), "--executor", "ray"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs Ray, which is not installed here: pip install -e '.[ray]'" in err[0]
    assert not out.exists()


def test_run_folder_archives_keep_files_and_refuse_paths_outside(tmp_path):
    import io
    import tarfile

    run = tmp_path / "run"
    (run / "tensorboard").mkdir(parents=True)
    (run / "history.jsonl").write_text("{}\n")
    (run / "tensorboard" / "events").write_bytes(b"\x00\x01")
    (run / ".lock").write_text("123\n")
    (run / ".last.pt.tmp").write_bytes(b"half")
    archive = folders.pack(run)
    assert set(folders.members(archive)) == {"history.jsonl", "tensorboard/events"}
    assert folders.unpack(archive, tmp_path / "copy") == 2
    assert (tmp_path / "copy" / "tensorboard" / "events").read_bytes() == b"\x00\x01"
    assert folders.members(folders.pack(tmp_path / "absent")) == {}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("../escape")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(ArchbenchError, match="'../escape', which is not a file inside it"):
        folders.unpack(buf.getvalue(), tmp_path / "copy")
    assert not (tmp_path / "escape").exists()


def test_a_folder_sent_back_never_replaces_one_with_more_epochs_or_one_in_use(tmp_path):
    from archbench.scale.ray_grid import _land_archive
    from archbench.train.lock import run_lock

    sent = tmp_path / "sent"
    sent.mkdir()
    (sent / "history.jsonl").write_text('{"epoch": 1}\n{"epoch": 2}\n')
    (sent / "last.pt").write_bytes(b"epoch 2")
    archive = folders.pack(sent)
    here = tmp_path / "out" / "tiny" / "seed0"
    here.mkdir(parents=True)
    (here / "history.jsonl").write_text('{"epoch": 1}\n{"epoch": 2}\n{"epoch": 3}\n')
    (here / "last.pt").write_bytes(b"epoch 3")
    assert "kept" in _land_archive(archive, here) and (here / "last.pt").read_bytes() == b"epoch 3"
    with run_lock(here), pytest.raises(ArchbenchError, match="in use by another archbench process"):
        _land_archive(archive, here)
    (here / "history.jsonl").write_text('{"epoch": 1}\n')
    assert "2 files" in _land_archive(archive, here)
    assert (here / "last.pt").read_bytes() == b"epoch 2" and not (here / ".lock").exists()
