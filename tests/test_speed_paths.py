"""The speed paths on CPU: compile parity, the graph step's premises, bench, device options."""

import json
import re

import pytest
import torch

from archbench.config import Config, resolve
from archbench.data.pipelines import build_pipeline
from archbench.errors import ArchbenchError
from archbench.train.engine import Tally, TrainStep, train_one_epoch
from archbench.train.graphs import _ensure_momentum_buffers
from archbench.train.training import (
    adopt_optimizer_impl,
    build_model,
    build_optimizer,
    build_step,
    check_device_options,
)
from conftest import synthetic

CPU = torch.device("cpu")


def _epoch(cfg: Config, data) -> dict:
    cfg = resolve(cfg)
    model = build_model(cfg, CPU)
    opt = build_optimizer(model, cfg, CPU)
    pipe = build_pipeline("fast", data, cfg.batch_size, cfg.seed, CPU)
    return train_one_epoch(model, pipe.train_batches(0), build_step(model, opt, cfg, CPU), CPU, Tally(CPU))


def test_compiled_epoch_matches_eager_within_tolerance():
    data = synthetic(32, 8)
    base = dict(model="resnet18", batch_size=16, device="cpu")
    eager = _epoch(Config(**base), data)
    compiled = _epoch(Config(**base, compile=True), data)
    assert compiled["loss"] == pytest.approx(eager["loss"], rel=1e-4)
    assert compiled["acc"] == eager["acc"]


def test_sgd_first_step_on_zero_momentum_buffers_equals_first_step_on_none():
    """The premise that lets a CUDA graph capture SGD before its buffers exist."""
    results = []
    for prefill in (False, True):
        torch.manual_seed(0)
        model = torch.nn.Linear(8, 3)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        if prefill:
            _ensure_momentum_buffers(opt)
            assert all(torch.count_nonzero(opt.state[p]["momentum_buffer"]) == 0 for p in model.parameters())
        x, y = torch.randn(4, 8), torch.tensor([0, 1, 2, 0])
        for _ in range(3):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        results.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_tally_flags_first_non_finite_step_and_resets():
    tally = Tally(CPU)
    logits, y = torch.zeros(2, 10), torch.tensor([0, 1])
    for loss in (1.0, 2.0, float("inf"), float("nan")):
        tally.add(torch.tensor(loss), logits, y)
    assert int(tally.first_bad) == 2 and int(tally.step) == 4
    tally.reset()
    assert int(tally.first_bad) == -1 and int(tally.step) == 0 and float(tally.loss_sum) == 0


def test_cuda_graphs_on_cpu_is_a_clear_error():
    with pytest.raises(ArchbenchError, match="--cuda-graphs needs a CUDA device"):
        check_device_options(resolve(Config(cuda_graphs=True)), CPU)


def test_checkpointed_optimizer_adopts_this_devices_implementation():
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    state = opt.state_dict()
    state["param_groups"][0]["fused"] = True  # as saved by a CUDA run
    opt.load_state_dict(state)
    adopt_optimizer_impl(opt, CPU)
    assert opt.param_groups[0]["fused"] is False
    opt.zero_grad()
    model(torch.ones(1, 2)).sum().backward()
    opt.step()  # would fail on a CPU build without fused SGD support if "fused" had stuck


def test_train_step_under_bf16_autocast_keeps_loss_and_bn_stats_fp32():
    cfg = resolve(Config(model="resnet18", precision="bf16", device="cpu"))
    model = build_model(cfg, CPU)
    opt = build_optimizer(model, cfg, CPU)
    tally = Tally(CPU)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    TrainStep(model, opt, CPU, "bf16")(x, y, tally)
    assert tally.loss_sum.dtype == torch.float32 and torch.isfinite(tally.loss_sum)
    bn = model.stem[1]
    assert bn.running_mean.dtype == torch.float32 and bn.weight.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.slow
def test_bench_on_cpu_prints_the_table_and_writes_json(tmp_path):
    from test_cli import archbench

    out = tmp_path / "bench.json"
    p = archbench(
        "bench",
        "resnet18",
        "--synthetic",
        "--device",
        "cpu",
        "--train-subset",
        "32",
        "--test-subset",
        "32",
        "--batch-size",
        "16",
        "--epochs",
        "1",
        "--quiet",
        "--json",
        out,
    )
    head = [l for l in p.stdout.splitlines() if l.startswith("model")][0].split()
    assert head[:4] == ["model", "pipeline", "precision", "train"] and "speed-up" in head
    assert re.search(r"resnet18\s+fast\s+fp32\s.*\d\.\dx\s*$", p.stdout, re.M)
    assert re.search(r"resnet18\s+reference\s+fp32\s", p.stdout)
    data = json.loads(out.read_text())
    rows = {r["pipeline"]: r for r in data["results"]}
    assert set(rows) == {"fast", "reference"} and data["timed_epochs"] == 1
    for r in rows.values():
        assert r["train_images"] == 32 and r["train_s_per_epoch"] > 0 and r["images_per_s"] > 0
        assert r["train_tflops"] > 0 and r["percent_of_peak"] is None and r["peak_memory_mib"] is None
    ratio = (rows["reference"]["train_s_per_epoch"] + rows["reference"]["eval_s_per_epoch"]) / (
        rows["fast"]["train_s_per_epoch"] + rows["fast"]["eval_s_per_epoch"]
    )
    assert rows["fast"]["speedup"] == pytest.approx(ratio)


def test_bench_flop_count_matches_the_known_resnet18_cost():
    from archbench.bench import train_flops_per_image

    flops = train_flops_per_image(resolve(Config(model="resnet18", batch_size=4)), CPU)
    # ~0.56 GFLOP forward per image; backward costs about twice the forward.
    assert 3.0e9 < flops < 3.6e9


def test_bench_rejects_unknown_pipeline():
    from test_cli import archbench

    p = archbench("bench", "--pipelines", "fast,turbo", "--synthetic", "--device", "cpu", check=False)
    assert p.returncode == 1 and "--pipelines 'fast,turbo'" in p.stderr
