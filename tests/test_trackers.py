"""Experiment trackers: MLflow (a file store here) and W&B (offline) through the real runner.

No test reaches the network: MLflow writes a file store under tmp_path, W&B runs with
WANDB_MODE=offline and its files are read back from the run's ``.wandb`` record log. The
runs train the tests' tiny model for an epoch or two on a few synthetic images.
"""

from __future__ import annotations

import json
import os
import struct
import sys
import time
from pathlib import Path

import pytest

import tiny_model
from archbench.cli import build_parser, config_from_args, main
from archbench.config import Config, read_json
from archbench.errors import ArchbenchError
from archbench.train import history
from archbench.train.runner import Run
from archbench.train.trackers import IDS_NAME, mlflow_params, mlflow_uri, open_trackers
from conftest import SAMPLE_DIR, needs_sample, synthetic

mlflow = pytest.importorskip("mlflow")
wandb = pytest.importorskip("wandb")


@pytest.fixture(autouse=True)
def tiny_and_local(monkeypatch, tmp_path):
    """The tiny model registered; W&B offline, quiet, and writing nothing outside tmp_path;
    MLFLOW_ALLOW_FILE_STORE unset, so archbench must set it for its file stores."""
    from archbench.models.registry import MODELS

    monkeypatch.setitem(MODELS, tiny_model.NAME, tiny_model.SPEC)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "unset by the test")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")


def _cfg(out: Path, **kw) -> Config:
    base = dict(
        model=tiny_model.NAME,
        epochs=1,
        batch_size=10,
        milestones=(1,),
        device="cpu",
        quiet=True,
        grad_norms_per_epoch=0,
        out=str(out),
    )
    return Config(**{**base, **kw})


def _train(cfg: Config, resume: bool = False) -> Path:
    run_dir = Path(cfg.out) / cfg.model
    data = synthetic(40, 20)
    Run(cfg, run_dir, log=lambda m: None).train(lambda: data, resume=resume)
    return run_dir


def _client(cfg: Config):
    return mlflow.MlflowClient(mlflow_uri(cfg))


def _mlflow_run(run_dir: Path, cfg: Config):
    ids = json.loads((run_dir / IDS_NAME).read_text())["mlflow"]
    assert ids["tracking_uri"] == mlflow_uri(cfg)
    return _client(cfg).get_run(ids["run_id"])


def _history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


# ---------------------------------------------------------------- MLflow


def test_mlflow_run_holds_the_config_and_each_epoch_and_a_resume_continues_it(tmp_path):
    cfg = _cfg(tmp_path / "runs", mlflow="default")
    run_dir = _train(cfg)
    assert (tmp_path / "runs" / "mlruns").is_dir()  # the default store: OUT/mlruns
    run = _mlflow_run(run_dir, cfg)
    assert run.data.params == mlflow_params(read_json(run_dir / "config.json"))  # the resolved config
    assert run.info.run_name == tiny_model.NAME and run.info.status == "FINISHED"
    client = _client(cfg)
    assert _history(client, run.info.run_id, "val_acc") == [(1, pytest.approx(history.read(run_dir)[0]["val_acc"]))]
    for key in ("train_loss", "train_acc", "val_loss", "lr", "epoch_seconds"):
        assert [s for s, _ in _history(client, run.info.run_id, key)] == [1], key

    _train(cfg.replace(epochs=2), resume=True)
    again = _mlflow_run(run_dir, cfg)
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    rows = history.read(run_dir)
    got = _history(client, run.info.run_id, "val_acc")
    assert got == [(r["epoch"], pytest.approx(r["val_acc"])) for r in rows] and len(got) == 2
    assert _history(client, run.info.run_id, "lr") == [(1, pytest.approx(0.1)), (2, pytest.approx(0.01))]
    # Params cannot change in MLflow: the extended epochs are a tag, the start value stays.
    assert again.data.params["epochs"] == "1" and again.data.tags["config.epochs"] == "2"


def test_an_epoch_replayed_after_a_crash_is_logged_once(tmp_path):
    """A killed process may log an epoch whose checkpoint never landed; the resume replays it."""
    cfg = _cfg(tmp_path / "runs", epochs=2, mlflow="default")
    run_dir = _train(cfg)
    rows = history.read(run_dir)
    # As the resume sees it: the checkpoint holds epoch 1 only, the MLflow run holds both.
    trackers = open_trackers(cfg, run_dir, rows[:1])
    for t in trackers:
        t.log_epoch({**rows[1], "val_acc": -1.0})
        t.close(finished=True)
    run = _mlflow_run(run_dir, cfg)
    assert _history(_client(cfg), run.info.run_id, "val_acc") == [(r["epoch"], r["val_acc"]) for r in rows]


def test_mlflow_turned_on_for_a_resume_gets_the_earlier_epochs_too(tmp_path):
    store = (tmp_path / "elsewhere" / "mlruns").as_uri()  # a URI the user names: used as given
    run_dir = _train(_cfg(tmp_path / "runs"))
    cfg = _cfg(tmp_path / "runs", epochs=2, mlflow=store)
    _train(cfg, resume=True)
    run = _mlflow_run(run_dir, cfg)
    assert (tmp_path / "elsewhere" / "mlruns").is_dir() and not (tmp_path / "runs" / "mlruns").exists()
    assert [s for s, _ in _history(_client(cfg), run.info.run_id, "val_acc")] == [1, 2]


# ---------------------------------------------------------------- W&B


def _wandb_records(path: Path):
    """The protobuf records of a ``.wandb`` file: a 7-byte header (":W&B", magic, version),
    then LevelDB-style log blocks of 32 KiB, each record split into typed chunks."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # too little room left for a chunk header: zero padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 2):  # full, first
            pending = chunk
        elif kind in (3, 4):  # middle, last
            pending += chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            yield record


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)  # wandb writes history keys in either field


def _wandb_run(folder: Path) -> dict:
    """One offline run folder's run id, name, job type, config and history rows."""
    (log,) = folder.glob("run-*.wandb")
    out = {"rows": [], "artifacts": []}
    for r in _wandb_records(log):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            out |= {"id": r.run.run_id, "name": r.run.display_name, "job_type": r.run.job_type}
            out["config"] = {i.key: json.loads(i.value_json) for i in r.run.config.update}
        elif kind == "history":
            out["rows"].append({_key(i): json.loads(i.value_json) for i in r.history.item})
        elif kind == "artifact":
            out["artifacts"].append((r.artifact.name, sorted(e.path for e in r.artifact.manifest.contents)))
    return out


def test_wandb_offline_logs_each_epoch_and_a_resume_continues_the_run(tmp_path):
    cfg = _cfg(tmp_path / "runs", wandb=True)
    run_dir = _train(cfg)
    (first,) = (run_dir / "wandb").glob("offline-run-*")
    one = _wandb_run(first)
    assert one["name"] == tiny_model.NAME and one["config"]["model"] == tiny_model.NAME
    assert json.loads((run_dir / IDS_NAME).read_text()) == {"wandb": {"id": one["id"]}}
    assert [(r["epoch"], r["_step"], r["val_acc"]) for r in one["rows"]] == [
        (1, 1, pytest.approx(history.read(run_dir)[0]["val_acc"]))
    ]

    # wandb names an offline folder by the second it starts and the run id, which a resume keeps:
    # a resume within the same second would share the first folder
    started = int(time.time())
    while int(time.time()) == started:
        time.sleep(0.05)
    _train(cfg.replace(epochs=2), resume=True)
    folders = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(folders) == 2  # offline, each process writes its own folder; `wandb sync` joins them by id
    two = _wandb_run(next(f for f in folders if f != first))
    assert two["id"] == one["id"] and two["config"]["epochs"] == 2
    rows = history.read(run_dir)
    assert [(r["epoch"], r["val_acc"]) for r in two["rows"]] == [(2, pytest.approx(rows[1]["val_acc"]))]
    assert {"train_loss", "train_acc", "val_loss", "lr", "epoch_seconds"} <= set(two["rows"][0])


# ---------------------------------------------------------------- compare


@needs_sample
def test_compare_logs_its_outputs_to_a_comparison_run_of_each_tracker(tmp_path, capsys):
    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator

    out = tmp_path / "cmp"
    argv = ["compare", "tiny", "--epochs", "1", "--milestones", "1", "--train-subset", "20", "--test-subset", "20"]
    argv += ["--batch-size", "20", "--device", "cpu", "--quiet", "--data-dir", str(SAMPLE_DIR), "--out", str(out)]
    assert main([*argv, "--tensorboard", "--wandb", "--mlflow"]) == 0
    assert "Logged the comparison: MLflow run" in capsys.readouterr().out

    client = mlflow.MlflowClient((out / "mlruns").as_uri())
    runs = client.search_runs([client.get_experiment_by_name("archbench").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["comparison", "tiny"]
    (comparison,) = [r for r in runs if r.info.run_name == "comparison"]
    logged = {a.path for a in client.list_artifacts(comparison.info.run_id)}
    figures = {p.name for p in out.glob("*.png")}
    assert {"comparison.md", "comparison.csv", "report.md", "report.html"} | figures <= logged and figures
    assert comparison.data.params["models"] == "tiny"

    (folder,) = (out / "wandb").glob("offline-run-*")
    got = _wandb_run(folder)
    assert got["name"] == "comparison" and got["job_type"] == "comparison"
    ((name, files),) = got["artifacts"]
    assert name == "comparison" and {"comparison.md", "report.html"} | figures <= set(files)
    assert list((out / "tiny" / "wandb").glob("offline-run-*"))  # the training run's own

    # TensorBoard has no artifacts: the table as text, a rerun's replacing the last one.
    assert main([*argv, "--tensorboard"]) == 0
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    (text,) = acc.Tensors("comparison/text_summary")
    assert text.tensor_proto.string_val[0].decode() == (out / "comparison.md").read_text()


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize("package,setting", [("mlflow", {"mlflow": "default"}), ("wandb", {"wandb": True})])
def test_a_missing_package_is_one_error_before_any_folder(tmp_path, monkeypatch, capsys, package, setting):
    monkeypatch.setitem(sys.modules, package, None)  # what `import` finds for a package not installed
    cfg = _cfg(tmp_path / "runs", **setting)
    with pytest.raises(ArchbenchError, match=rf"--{package} needs the {package} package: pip install "):
        Run(cfg, tmp_path / "runs" / "tiny")
    flag = "--mlflow" if package == "mlflow" else "--wandb"
    rc = main(["train", "tiny", flag, "--out", str(tmp_path / "runs"), "--device", "cpu", "--data-dir", "nowhere"])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("archbench: error: --") and "pip install" in err and err.count("\n") == 1
    assert not (tmp_path / "runs").exists()


def test_mlflow_flag_without_a_uri_means_the_default_store_and_a_model_name_is_refused(tmp_path):
    def cfg(*argv):
        return config_from_args(build_parser().parse_args(["compare", *argv]))

    assert cfg("--mlflow").mlflow == "default"
    assert mlflow_uri(cfg("--mlflow", "--out", str(tmp_path))) == (tmp_path / "mlruns").resolve().as_uri()
    assert cfg("--mlflow=http://127.0.0.1:5000").mlflow == "http://127.0.0.1:5000"
    assert cfg().mlflow is None and cfg().wandb is False and cfg("--wandb").wandb is True
    # nargs="?" takes the next word: `compare --mlflow resnet18 vgg19_bn` would log to ./resnet18
    with pytest.raises(ArchbenchError, match="is a model name, not a tracking URI"):
        Run(cfg("--mlflow", "resnet18", "vgg19_bn").replace(device="cpu"), tmp_path / "r")


def test_a_damaged_trackers_file_is_refused_naming_it(tmp_path):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / IDS_NAME).write_text('{"mlflow": ["not", "ids"]}\n')
    with pytest.raises(ArchbenchError, match=rf"{IDS_NAME}.*delete {IDS_NAME}"):
        open_trackers(_cfg(tmp_path, mlflow="default"), run_dir, [])


# ---------------------------------------------------------------- a tracker that fails


def test_a_failed_last_log_is_caught_up_when_the_finished_run_is_reused(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    cfg = _cfg(tmp_path / "out", epochs=2, mlflow="default")
    real = MlflowClient.log_batch
    failed = []

    def fail_once_at_epoch_2(self, run_id, metrics=(), **kw):
        if not failed and any(m.step == 2 for m in metrics):
            failed.append(1)
            raise RuntimeError("store went away")
        return real(self, run_id, metrics=metrics, **kw)

    monkeypatch.setattr(MlflowClient, "log_batch", fail_once_at_epoch_2)
    with pytest.raises(ArchbenchError, match=r"^mlflow: could not log epoch 2 .*store went away"):
        _train(cfg)
    run_dir = Path(cfg.out) / cfg.model
    assert len(history.read(run_dir)) == 2  # the run's own files are complete
    run = _mlflow_run(run_dir, cfg)
    assert run.info.status == "FAILED" and [s for s, _ in _history(_client(cfg), run.info.run_id, "val_acc")] == [1]
    _train(cfg, resume=True)  # finished: reused, and its tracker catches up
    run = _mlflow_run(run_dir, cfg)
    assert run.info.status == "FINISHED" and [s for s, _ in _history(_client(cfg), run.info.run_id, "val_acc")] == [
        1,
        2,
    ]


def test_a_tracker_that_fails_to_close_costs_the_run_none_of_its_files(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    def refuse(self, *a, **k):
        raise RuntimeError("cannot end the run")

    monkeypatch.setattr(MlflowClient, "set_terminated", refuse)
    cfg = _cfg(tmp_path / "out", epochs=2, mlflow="default")
    with pytest.raises(ArchbenchError, match=r"^mlflow: could not end run"):
        _train(cfg)
    run_dir = Path(cfg.out) / cfg.model
    assert [r["epoch"] for r in history.read(run_dir)] == [1, 2]
    assert (run_dir / "last.pt").is_file() and (run_dir / "best.pt").is_file()


def test_offline_keeps_the_trackers_off_the_network_too(tmp_path, monkeypatch):
    from archbench.train.trackers import check_trackers

    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.delenv("MLFLOW_DISABLE_TELEMETRY")
    check_trackers(_cfg(tmp_path, wandb=True, mlflow="default", offline=True))
    assert os.environ["WANDB_MODE"] == "offline" and os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true"
