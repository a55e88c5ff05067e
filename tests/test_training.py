"""Training runs: seeding, exact resume, history, best/last checkpoints, divergence."""

import json
import math
import re

import pytest
import torch
import torch.nn as nn

import tiny_model
from archbench.config import Config
from archbench.errors import ArchbenchError, DivergenceError
from archbench.train import checkpoint, history
from archbench.train.engine import TrainStep, evaluate, train_one_epoch
from archbench.train.runner import Run
from conftest import synthetic

TIMING = ("train_seconds", "eval_seconds", "epoch_seconds")


@pytest.fixture(autouse=True)
def tiny_registered(monkeypatch):
    """The machinery tested here does not depend on the architecture (see tiny_model.py);
    the stop-and-resume test also runs the real models."""
    from archbench.models.registry import MODELS

    monkeypatch.setitem(MODELS, tiny_model.NAME, tiny_model.SPEC)


def _cfg(**kw) -> Config:
    base = dict(model=tiny_model.NAME, epochs=2, batch_size=16, milestones=(1,), device="cpu", quiet=True)
    return Config(**{**base, **kw})


def _train(tmp, cfg, resume=False, data=None):
    data = data or synthetic(48, 20)
    return Run(cfg, tmp, log=lambda m: None).train(lambda: data, resume=resume)


def _numbers(run_dir):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in history.read(run_dir)]


def _weights(run_dir, name="last.pt"):
    return checkpoint.load(run_dir / name)["model"]


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_history_records_the_lr_actually_used_each_epoch(tmp_path):
    _train(tmp_path / "r", _cfg(epochs=3, milestones=(1, 2)))
    rows = history.read(tmp_path / "r")
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert [r["lr"] for r in rows] == pytest.approx([0.1, 0.01, 0.001])
    assert all(r["epoch_seconds"] > 0 and 0 <= r["val_acc"] <= 100 for r in rows)
    csv_lines = (tmp_path / "r" / "history.csv").read_text().splitlines()
    assert csv_lines[0].split(",") == list(history.FIELDS) and len(csv_lines) == 4
    assert json.loads((tmp_path / "r" / "config.json").read_text())["lr"] == 0.1


def test_same_seed_gives_identical_runs_on_cpu(tmp_path):
    _train(tmp_path / "a", _cfg())
    _train(tmp_path / "b", _cfg())
    assert _numbers(tmp_path / "a") == _numbers(tmp_path / "b")
    _assert_same_weights(_weights(tmp_path / "a"), _weights(tmp_path / "b"))
    _train(tmp_path / "c", _cfg(seed=1))
    assert _numbers(tmp_path / "c") != _numbers(tmp_path / "a")


@pytest.mark.slow
@pytest.mark.parametrize("model,pipeline", [("resnet18", "fast"), ("vgg19_bn", "fast"), ("resnet18", "reference")])
def test_stop_and_resume_equals_training_straight_through(tmp_path, model, pipeline):
    """vgg19_bn has dropout, so this also proves the RNG state is restored."""
    straight = tmp_path / "straight"
    _train(straight, _cfg(model=model, pipeline=pipeline, workers=0))
    # "Stopped after epoch 1": the same run, interrupted as its second epoch begins.
    stopped = tmp_path / "stopped"

    class Stop(Exception):
        pass

    run = Run(_cfg(model=model, pipeline=pipeline, workers=0), stopped, log=lambda m: None)
    orig = run._epoch
    calls = []

    def epoch_then_stop(*a, **k):
        if calls:
            raise Stop
        calls.append(1)
        return orig(*a, **k)

    run._epoch = epoch_then_stop
    with pytest.raises(Stop):
        run.train(lambda: synthetic(48, 20))
    assert len(history.read(stopped)) == 1
    torch.manual_seed(12345)  # a resumed process starts from an unrelated RNG state
    _train(stopped, _cfg(model=model, pipeline=pipeline, workers=0), resume=True)
    assert _numbers(stopped) == _numbers(straight)
    _assert_same_weights(_weights(stopped), _weights(straight))
    _assert_same_weights(_weights(stopped, "best.pt"), _weights(straight, "best.pt"))
    assert (
        checkpoint.load(stopped / "last.pt")["optimizer"]["state"].keys()
        == checkpoint.load(straight / "last.pt")["optimizer"]["state"].keys()
    )


def test_resume_rebuilds_history_from_checkpoint(tmp_path):
    """A history row written after the last checkpoint (crash in between) is not duplicated."""
    d = tmp_path / "r"
    _train(d, _cfg(epochs=1))
    history.append_record(d, history.read(d)[0])  # as if epoch 1's row got written twice
    _train(d, _cfg(epochs=1), resume=True)  # the same protocol resumes and rewrites history from last.pt
    assert [r["epoch"] for r in history.read(d)] == [1]


@pytest.mark.parametrize("pipeline", ["fast", "reference"])
def test_extending_a_finished_run_equals_training_the_longer_run_straight(tmp_path, pipeline):
    cfg = _cfg(pipeline=pipeline, workers=0, milestones=(2,))
    straight, extended = tmp_path / "straight", tmp_path / "extended"
    _train(straight, cfg.replace(epochs=3))
    _train(extended, cfg.replace(epochs=2))
    torch.manual_seed(12345)  # a later process starts from an unrelated RNG state
    state = _train(extended, cfg.replace(epochs=3), resume=True)
    assert state.epoch == 3 and _numbers(extended) == _numbers(straight)
    for name in ("last.pt", "best.pt"):
        _assert_same_weights(_weights(extended, name), _weights(straight, name))
    assert json.loads((extended / "config.json").read_text())["epochs"] == 3


def test_fewer_epochs_or_a_change_to_finished_epochs_is_refused_by_name(tmp_path):
    d = tmp_path / "r"
    _train(d, _cfg(epochs=2, milestones=(2,)))
    for change, named in (
        ({"epochs": 1}, "epochs: 2 in the run folder vs 1 now"),
        ({"epochs": 3, "milestones": (1,)}, "milestones: [2] in the run folder vs [1] now"),
        ({"epochs": 3, "batch_size": 8}, "batch_size: 16 in the run folder vs 8 now"),
    ):
        with pytest.raises(ArchbenchError, match=re.escape(named)):
            _train(d, _cfg(**{"epochs": 2, "milestones": (2,), **change}), resume=True)


def test_existing_run_needs_resume_and_finished_run_is_reused(tmp_path):
    d = tmp_path / "r"
    _train(d, _cfg(epochs=1))
    with pytest.raises(ArchbenchError, match="already holds a run; pass --resume"):
        _train(d, _cfg(epochs=1))
    before = (d / "last.pt").read_bytes()
    state = _train(d, _cfg(epochs=1), resume=True)
    assert state.epoch == 1 and (d / "last.pt").read_bytes() == before


def test_best_checkpoint_is_the_best_val_epoch(tmp_path):
    d = tmp_path / "r"
    state = _train(d, _cfg(epochs=3, milestones=(2,)))
    rows = history.read(d)
    best = max(range(3), key=lambda i: (rows[i]["val_acc"], -i))
    ckpt = checkpoint.load(d / "best.pt")
    assert ckpt["epoch"] == best + 1 == state.best_epoch
    assert ckpt["val_acc"] == rows[best]["val_acc"]


def test_checkpoint_of_another_model_and_corrupt_checkpoint_are_clear_errors(tmp_path):
    d = tmp_path / "r"
    _train(d, _cfg(epochs=1))
    from archbench.models import create_model

    with pytest.raises(ArchbenchError, match="does not fit model 'vgg19_bn'.*another model"):
        checkpoint.load_weights(create_model("vgg19_bn"), _weights(d), d / "last.pt", "vgg19_bn")
    (d / "last.pt").write_bytes((d / "last.pt").read_bytes()[:1000])
    with pytest.raises(ArchbenchError, match="last.pt is unreadable .*truncated or damaged"):
        _train(d, _cfg(epochs=1), resume=True)


def test_checkpoints_load_with_weights_only(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("code ran",))

    bad = tmp_path / "evil.pt"
    torch.save({"format": checkpoint.FORMAT, "x": Evil()}, bad)
    with pytest.raises(ArchbenchError, match="unreadable"):
        checkpoint.load(bad)


class _NaNAfter(nn.Module):
    """A linear model whose output turns NaN from the given step on."""

    def __init__(self, bad_step: int):
        super().__init__()
        self.fc, self.bad_step, self.calls = nn.Linear(3 * 32 * 32, 10), bad_step, 0

    def forward(self, x):
        self.calls += 1
        out = self.fc(x.flatten(1))
        return out * float("nan") if self.calls >= self.bad_step else out


def test_non_finite_loss_names_the_step():
    model = _NaNAfter(bad_step=3)
    batches = [(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))) for _ in range(5)]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    step = TrainStep(model, opt, torch.device("cpu"))
    with pytest.raises(DivergenceError, match=r"loss became non-finite \(nan or inf\) at step 3 "):
        train_one_epoch(model, batches, step, torch.device("cpu"))


def test_divergent_run_stops_with_last_good_checkpoint_kept(tmp_path, monkeypatch):
    import archbench.train.runner as runner

    real, calls = runner.train_one_epoch, []

    def diverge_in_epoch_2(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise DivergenceError("loss became non-finite at step 2 of the epoch")
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "train_one_epoch", diverge_in_epoch_2)
    d = tmp_path / "r"
    with pytest.raises(
        DivergenceError,
        match=r"\[tiny\] epoch 2: loss became non-finite at step 2.*keeps the checkpoint of epoch 1",
    ):
        _train(d, _cfg(epochs=3))
    assert checkpoint.load(d / "last.pt")["epoch"] == 1
    assert [r["epoch"] for r in history.read(d)] == [1]


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"loss": float("nan")}, r"epoch 2: the validation loss is nan \(non-finite\)"),
        ({"nonfinite_logits": 3}, r"epoch 2: 3 validation images got non-finite logits"),
    ],
)
def test_a_non_finite_validation_is_divergence_keeping_the_last_finite_epoch(tmp_path, monkeypatch, bad, message):
    import archbench.train.runner as runner

    real, calls = runner.evaluate, []

    def broken_in_epoch_2(*args, **kwargs):
        calls.append(1)
        ev = real(*args, **kwargs)
        return {**ev, **bad} if len(calls) == 2 else ev

    monkeypatch.setattr(runner, "evaluate", broken_in_epoch_2)
    d = tmp_path / "r"
    with pytest.raises(DivergenceError, match=message + ".*keeps the checkpoint of epoch 1"):
        _train(d, _cfg(epochs=3))
    assert checkpoint.load(d / "last.pt")["epoch"] == 1
    assert [r["epoch"] for r in history.read(d)] == [1]
    assert json.loads((d / "divergence.json").read_text())["epoch"] == 2


def test_evaluate_counts_images_with_non_finite_logits_even_when_the_loss_is_finite():
    class MinusInf(nn.Module):
        def forward(self, x):  # class 9 impossible for the first image: its loss stays finite
            out = torch.zeros(x.shape[0], 10)
            out[0, 9] = float("-inf")
            return out

    ev = evaluate(MinusInf(), [(torch.zeros(3, 3, 32, 32), torch.tensor([0, 1, 2]))], torch.device("cpu"))
    assert ev["nonfinite_logits"] == 1
    assert ev["loss"] == pytest.approx((math.log(9) + 2 * math.log(10)) / 3)


def test_evaluate_reports_exact_subset():
    class Fixed(nn.Module):
        def forward(self, x):  # predicts class 0 for every image
            return torch.zeros(x.shape[0], 10).index_fill_(1, torch.tensor([0]), 5.0)

    y = torch.tensor([0, 0, 1, 1, 0, 2])
    exact = torch.tensor([True, False, True, True, True, False])
    batches = [(torch.zeros(4, 3, 32, 32), y[:4]), (torch.zeros(2, 3, 32, 32), y[4:])]
    ev = evaluate(Fixed(), batches, torch.device("cpu"), exact)
    assert ev["acc"] == pytest.approx(100 * 3 / 6)
    assert ev["acc_exact"] == pytest.approx(100 * 2 / 4) and ev["images_exact"] == 4


def test_tensorboard_logs_per_epoch_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    d = tmp_path / "r"
    _train(d, _cfg(epochs=2, tensorboard=True))
    acc = EventAccumulator(str(d / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"loss/train", "loss/val", "accuracy/train", "accuracy/val", "lr"} <= set(tags)
    assert [e.step for e in acc.Scalars("lr")] == [1, 2]
    assert [e.value for e in acc.Scalars("lr")] == pytest.approx([0.1, 0.01])
    assert [e.value for e in acc.Scalars("accuracy/val")] == pytest.approx([r["val_acc"] for r in history.read(d)])
