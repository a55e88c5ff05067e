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
    step_mode,
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
    assert head[:5] == ["model", "pipeline", "precision", "step", "train"] and "speed-up" in head
    assert re.search(r"resnet18\s+fast\s+fp32\s+eager\s.*\d\.\dx\s*$", p.stdout, re.M)
    assert re.search(r"resnet18\s+reference\s+fp32\s+eager\s", p.stdout)
    assert "% peak" not in p.stdout.split("speed-up", 1)[1], "a CPU has no spec-sheet peak to explain"
    data = json.loads(out.read_text())
    rows = {r["pipeline"]: r for r in data["results"]}
    assert set(rows) == {"fast", "reference"} and data["timed_epochs"] == 1
    for r in rows.values():
        assert r["train_images"] == 32 and r["train_s_per_epoch"] > 0 and r["images_per_s"] > 0
        assert r["train_tflops"] > 0 and r["percent_of_peak"] is None and r["peak_memory_mib"] is None
        assert r["step"] == "eager" and r["peak_basis"] is None
    ratio = (rows["reference"]["train_s_per_epoch"] + rows["reference"]["eval_s_per_epoch"]) / (
        rows["fast"]["train_s_per_epoch"] + rows["fast"]["eval_s_per_epoch"]
    )
    assert rows["fast"]["speedup"] == pytest.approx(ratio)


def test_bench_flop_count_matches_the_known_resnet18_cost():
    from archbench.bench import train_flops_per_image

    flops = train_flops_per_image(resolve(Config(model="resnet18", batch_size=4)), CPU)
    # ~0.56 GFLOP forward per image; backward costs about twice the forward.
    assert 3.0e9 < flops < 3.6e9


def test_bench_rejects_unknown_pipelines_and_steps_and_graphs_off_cuda(capsys):
    from archbench.cli import main

    for argv, message in (
        (["--pipelines", "fast,turbo"], "--pipelines 'fast,turbo': allowed values are fast, reference"),
        (["--steps", "eager,jit"], "--steps 'eager,jit': allowed values are eager, graphs, compile, compile+graphs"),
        (
            ["--steps", "eager,graphs"],
            "--steps 'eager,graphs': CUDA graphs need a CUDA device, but the bench runs on cpu",
        ),
        (["--steps", "eager", "--concurrent", "1,2"], "--steps and --concurrent do not go together"),
    ):
        assert main(["bench", *argv, "--synthetic", "--device", "cpu"]) == 1
        out, err = capsys.readouterr()
        assert err.startswith(f"archbench: error: {message}") and err.count("\n") == 1 and "bench:" not in out, argv


def test_bench_steps_are_asked_for_outright():
    from archbench.bench import STEP_MODES, step_config

    base = Config(compile=True, cuda_graphs=None)
    got = {m: (step_config(base, m).compile, step_config(base, m).cuda_graphs) for m in STEP_MODES}
    assert got == {
        "eager": (False, False),
        "graphs": (False, True),
        "compile": (True, False),
        "compile+graphs": (True, True),
    }


def test_peaks_are_those_of_the_exact_device_and_precision():
    from archbench.bench import device_peak

    assert device_peak("NVIDIA H100 80GB HBM3", "bf16", True) == (989.4, "989.4 TFLOP/s: bf16 tensor cores, dense")
    assert device_peak("NVIDIA H100 PCIe", "bf16", True)[0] == 756.5  # not the SXM part's 989.4
    assert device_peak("NVIDIA H200 NVL", "bf16", True)[0] == 835.5
    assert device_peak("NVIDIA H200", "fp32", True) == (
        494.7,
        "494.7 TFLOP/s: TF32 tensor cores, dense (cuDNN runs fp32 convolutions as TF32)",
    )
    assert device_peak("NVIDIA H200", "fp32", False) == (66.9, "66.9 TFLOP/s: fp32 without tensor cores")
    assert device_peak("NVIDIA H100 SXM5 engineering sample", "bf16", True) is None  # a name not on record


def test_bench_table_says_what_each_percent_of_peak_is_of():
    from archbench.bench import BenchResult, table

    def row(device, precision, pct, basis):
        timing = dict(train_s_per_epoch=0.5, eval_s_per_epoch=0.1, images_per_s=1e5, warmup_s=1.0)
        return BenchResult(
            model="resnet18", pipeline="fast", device=device, precision=precision, step="graphs",
            train_images=50_000, test_images=10_000, epochs=1, **timing, peak_memory_mib=1.0, train_tflops=300.0,
            percent_of_peak=pct, peak_basis=basis, final_train_loss=1.0, final_val_acc=90.0,
        )  # fmt: skip

    text = table(
        [
            row("NVIDIA H200", "bf16", 30.0, "989.4 TFLOP/s: bf16 tensor cores, dense"),
            row("NVIDIA H200", "bf16", 31.0, "989.4 TFLOP/s: bf16 tensor cores, dense"),
            row("NVIDIA L4", "bf16", None, None),
        ]
    )
    notes = text.splitlines()[-2:]
    assert notes == [
        "% peak (bf16): of the NVIDIA H200's 989.4 TFLOP/s: bf16 tensor cores, dense",
        "% peak: no spec-sheet peak on record for 'NVIDIA L4' (archbench.bench.DEVICE_PEAKS)",
    ]


def test_cuda_graphs_are_the_cuda_default_and_only_asked_for_ones_are_an_error_elsewhere():
    from archbench.train.training import uses_cuda_graphs

    cuda = torch.device("cuda")  # a device name: nothing runs on it
    assert [uses_cuda_graphs(Config(cuda_graphs=v), cuda) for v in (None, True, False)] == [True, True, False]
    assert [uses_cuda_graphs(Config(cuda_graphs=v), CPU) for v in (None, False)] == [False, False]
    check_device_options(resolve(Config()), CPU)  # the default runs anywhere
    cfg = resolve(Config(model="resnet18", device="cpu"))
    model = build_model(cfg, CPU)
    assert type(build_step(model, build_optimizer(model, cfg, CPU), cfg, CPU)) is TrainStep


def test_compile_makes_one_graph_per_batch_shape(monkeypatch):
    """A dynamic-shape guess at the last partial batch would recompile into shape-generic kernels."""
    calls = []
    monkeypatch.setattr(torch, "compile", lambda model, **kw: calls.append(kw) or model)
    cfg = resolve(Config(model="resnet18", device="cpu", compile=True))
    model = build_model(cfg, CPU)
    step = build_step(model, build_optimizer(model, cfg, CPU), cfg, CPU)
    assert calls == [{"dynamic": False}] and step_mode(step, cfg) == "compile"


def test_an_epochs_steps_read_the_host_a_fixed_number_of_times():
    """Per step neither ``.item()`` nor a boolean-mask index: on CUDA either would stall the queue."""
    from test_evaluate import OpLog

    def host_reads(n_batches: int) -> list[str]:
        cfg = resolve(Config(model="resnet18", device="cpu"))
        model = build_model(cfg, CPU)
        step = build_step(model, build_optimizer(model, cfg, CPU), cfg, CPU)
        g = torch.Generator().manual_seed(0)
        batches = [(torch.randn(2, 3, 32, 32, generator=g), torch.tensor([0, 1])) for _ in range(n_batches)]
        with OpLog() as log:
            train_one_epoch(model, batches, step, CPU, Tally(CPU))
        return [
            op
            for op in log.ops
            if any(k in op for k in ("_local_scalar_dense", "nonzero", "index.Tensor", "masked_select"))
        ]

    few, many = host_reads(1), host_reads(3)
    assert few == many and len(many) == 3  # the pass's end: first bad step, loss sum, correct count


def test_only_the_packages_own_models_get_graphs_and_input_formats_unasked(monkeypatch):
    """A model from elsewhere may view its input as NCHW or decide things on the host: it is asked."""
    import tiny_model
    from archbench.data.pipelines import InputFormat
    from archbench.models.registry import MODELS
    from archbench.train.training import input_format, own_model, uses_cuda_graphs

    monkeypatch.setitem(MODELS, tiny_model.NAME, tiny_model.SPEC)  # registered, as an installed package's is
    cuda = torch.device("cuda")  # a device name: nothing runs on it
    own = resolve(Config(model="vgg19", precision="bf16"))
    registered = resolve(Config(model=tiny_model.NAME, precision="bf16"))
    from_file = resolve(Config(model="se", model_spec="/x/se.py:se", lr=0.1, precision="bf16"))
    assert [own_model(c) for c in (own, registered, from_file)] == [True, False, False]
    assert input_format(own, cuda) == InputFormat(torch.bfloat16, channels_last=True)
    for other in (registered, from_file):
        assert not uses_cuda_graphs(other, cuda) and uses_cuda_graphs(other.replace(cuda_graphs=True), cuda)
        assert input_format(other, cuda) == InputFormat()  # float32 NCHW, what any model takes
