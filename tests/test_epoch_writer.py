"""The background epoch writer: order, superseded writes, errors, and waiting on close."""

import threading

import pytest
import torch

import archbench.train.epoch_writer as ew
from archbench.errors import ArchbenchError
from archbench.train import checkpoint, history
from archbench.train.epoch_writer import EpochFiles, EpochWriter, host_copy

CPU = torch.device("cpu")


def record(epoch: int) -> dict:
    """A history row as training writes it (the readers check every field)."""
    return {
        "epoch": epoch,
        "lr": 0.1,
        "train_loss": 1.0,
        "train_acc": 50.0,
        "val_loss": 1.0,
        "val_acc": float(epoch),
        "val_acc_exact": None,
        "train_seconds": 1.0,
        "eval_seconds": 0.5,
        "epoch_seconds": 1.5,
    }


def files(epoch: int, best: bool = False) -> EpochFiles:
    weights = {"w": torch.full((3,), float(epoch))}
    last = {
        "model_name": "m",
        "model": weights,
        "optimizer": {"state": {}, "param_groups": []},
        "epoch": epoch,
        "best_acc": float(epoch),
        "best_epoch": epoch,
        "rng": {"torch": torch.get_rng_state()},
        "config": {},
        "history": [record(e) for e in range(1, epoch + 1)],
        "gradflow": [[epoch, float(epoch), 1.0]],
    }
    return EpochFiles(
        last,
        [record(epoch)],
        {"model_name": "m", "model": weights, "epoch": epoch, "val_acc": float(epoch), "config": {}} if best else None,
    )


class GatedWrites:
    """Stands in for write_epoch_files: records each write, and can hold the writer inside one."""

    def __init__(self, fail_on: int | None = None):
        self.written: list[EpochFiles] = []
        self.entered, self.release = threading.Event(), threading.Event()
        self.release.set()
        self.fail_on = fail_on

    def __call__(self, run_dir, f: EpochFiles, layer_names) -> None:
        self.entered.set()
        self.release.wait(timeout=10)
        if self.fail_on is not None and f.last["epoch"] == self.fail_on:
            raise ArchbenchError(f"could not write {run_dir}/last.pt: No space left on device")
        self.written.append(f)


def test_writes_land_in_order_with_every_history_row(tmp_path):
    writer = EpochWriter(tmp_path, ["conv.weight"])
    for e in (1, 2, 3):
        writer.submit(files(e, best=e != 3))
    writer.close()
    assert [r["epoch"] for r in history.read(tmp_path)] == [1, 2, 3]
    assert checkpoint.load(tmp_path / "last.pt")["epoch"] == 3
    assert checkpoint.load(tmp_path / "best.pt")["epoch"] == 2
    assert (tmp_path / "gradflow.csv").read_text().splitlines() == ["epoch,t,conv.weight", "3,3.0,1.0"]


def test_epochs_arriving_while_the_disk_is_busy_are_written_once_as_the_newest(tmp_path, monkeypatch):
    writes = GatedWrites()
    monkeypatch.setattr(ew, "write_epoch_files", writes)
    writes.release.clear()
    writer = EpochWriter(tmp_path, ["conv.weight"])
    writer.submit(files(1, best=True))
    assert writes.entered.wait(timeout=10)  # epoch 1 is being written...
    writer.submit(files(2, best=True))  # ...while epochs 2 to 4 finish
    writer.submit(files(3, best=False))
    writer.submit(files(4, best=False))
    writes.release.set()
    writer.close()
    assert [f.last["epoch"] for f in writes.written] == [1, 4]
    merged = writes.written[1]
    assert [r["epoch"] for r in merged.records] == [2, 3, 4]
    assert merged.best["epoch"] == 2  # the newest best survives the merge


def test_a_failed_write_is_raised_at_the_next_hand_over_and_stops_the_writer(tmp_path, monkeypatch):
    writes = GatedWrites(fail_on=2)
    monkeypatch.setattr(ew, "write_epoch_files", writes)
    writer = EpochWriter(tmp_path, ["conv.weight"])
    writer.submit(files(1))
    writer.flush()
    writer.submit(files(2))
    with pytest.raises(ArchbenchError, match="No space left on device"):
        writer.flush()
    with pytest.raises(ArchbenchError, match="No space left on device"):
        writer.submit(files(3))
    writer.close(raise_errors=False)  # a run failing for another reason reports its own error
    assert [f.last["epoch"] for f in writes.written] == [1]


def test_close_waits_for_the_write_in_progress(tmp_path, monkeypatch):
    writes = GatedWrites()
    monkeypatch.setattr(ew, "write_epoch_files", writes)
    writes.release.clear()
    writer = EpochWriter(tmp_path, ["conv.weight"])
    writer.submit(files(1))
    assert writes.entered.wait(timeout=10)
    threading.Timer(0.2, writes.release.set).start()
    writer.close(raise_errors=False)
    assert [f.last["epoch"] for f in writes.written] == [1]


def test_host_copy_is_independent_of_the_training_tensors():
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 2)).sum().backward()
    opt.step()
    snap = host_copy({"model": model.state_dict(), "optimizer": opt.state_dict()}, CPU)
    before = [t.clone() for t in snap["model"].values()]
    buf_before = snap["optimizer"]["state"][0]["momentum_buffer"].clone()
    model(torch.ones(1, 2)).sum().backward()
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, snap["model"].values()))
    assert torch.equal(buf_before, snap["optimizer"]["state"][0]["momentum_buffer"])
    assert snap["optimizer"]["param_groups"][0]["lr"] == 0.1
