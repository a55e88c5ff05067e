"""The CUDA-only speed paths against the eager step they replace. Skipped without a CUDA GPU.

CUDA graphs replay captured kernels with baked-in addresses and learning rates, so
the checks are end to end: whole epochs, a last partial batch, a learning-rate change
and the gradient norms read between steps, each compared with the eager step.
"""

import json

import pytest
import torch

from archbench.bench import DEVICE_PEAKS, synthetic_cifar
from archbench.config import Config, resolve
from archbench.data.pipelines import build_pipeline
from archbench.models.registry import MODELS
from archbench.train.engine import Tally, evaluate, train_one_epoch
from archbench.train.epoch_writer import host_copy
from archbench.train.gradflow import GradFlow
from archbench.train.graphs import GraphedTrainStep
from archbench.train.training import build_model, build_optimizer, build_step, input_format, step_mode

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CUDA = torch.device("cuda")
BUILTIN = [name for name, spec in MODELS.items() if spec.build.__module__.startswith("archbench.models.")]
DATA = synthetic_cifar(200, 100)  # batch 64: three full batches and a partial one of 8


def _train(epochs: int = 2, model="resnet18", precision="fp32", **options) -> tuple[list[dict], torch.nn.Module, list]:
    options.setdefault("cuda_graphs", False)  # graphs are the CUDA default: the eager step is asked for
    cfg = resolve(Config(model=model, batch_size=64, lr=0.05, device="cuda", precision=precision, **options), "cuda")
    model = build_model(cfg, CUDA)
    opt = build_optimizer(model, cfg, CUDA)
    step, tally = build_step(model, opt, cfg, CUDA), Tally(CUDA)
    pipe = build_pipeline("fast", DATA, cfg.batch_size, cfg.seed, CUDA, fmt=input_format(cfg, CUDA))
    grads = GradFlow(model, 4, 4)
    results, norms = [], []
    for epoch in range(epochs):
        for g in opt.param_groups:
            g["lr"] = cfg.lr * (0.1 if epoch else 1.0)  # a new learning rate: a new capture
        tr = train_one_epoch(
            model, pipe.train_batches(epoch), step, CUDA, tally, after_step=lambda i: grads.after_step(i, step.grads_of)
        )
        ev = evaluate(model, pipe.test_batches(), CUDA, None, cfg.precision)
        results.append({"train_loss": tr["loss"], "train_acc": tr["acc"], "val_acc": ev["acc"]})
        norms += grads.take(epoch + 1)
    assert getattr(step, "mode", "eager") == ("graphs" if cfg.cuda_graphs else "eager")  # no silent fallback
    return results, model, norms


def test_graphed_epochs_match_eager_ones():
    eager, eager_model, eager_norms = _train()
    graphed, graphed_model, graphed_norms = _train(cuda_graphs=True)
    for e, g in zip(eager, graphed):
        assert g["train_loss"] == pytest.approx(e["train_loss"], rel=1e-3)
    # The same updates, up to cuDNN's algorithm choice and atomics.
    for (name, a), b in zip(eager_model.state_dict().items(), graphed_model.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), rtol=1e-3, atol=1e-4), name
    assert len(eager_norms) == len(graphed_norms) == 8
    for a, b in zip(eager_norms, graphed_norms):
        assert a[:2] == b[:2] and b[2:] == pytest.approx(a[2:], rel=1e-3)


@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_an_epochs_steps_never_wait_for_the_host(cuda_graphs):
    cfg = resolve(Config(model="resnet18", batch_size=64, device="cuda", cuda_graphs=cuda_graphs), "cuda")
    model = build_model(cfg, CUDA)
    opt = build_optimizer(model, cfg, CUDA)
    step, tally = build_step(model, opt, cfg, CUDA), Tally(CUDA)
    pipe = build_pipeline("fast", DATA, cfg.batch_size, cfg.seed, CUDA, fmt=input_format(cfg, CUDA))
    grads = GradFlow(model, 4, 4)
    train_one_epoch(model, pipe.train_batches(0), step, CUDA, tally)  # captures, cuDNN tuning
    tally.reset()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host sync raises
    try:
        for i, (x, y) in enumerate(pipe.train_batches(1)):
            step(x, y, tally)
            grads.after_step(i, step.grads_of)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert int(tally.step) == 4


def test_graphs_undo_their_warm_up_bn_statistics_and_batch_counters():
    _, model, _ = _train(epochs=1, cuda_graphs=True)
    counts = {int(b) for n, b in model.named_buffers() if n.endswith("num_batches_tracked")}
    assert counts == {4}  # four real steps; the capture's warm-up passes left no trace


@pytest.mark.parametrize("options", [{"compile": True, "cuda_graphs": False}, {"compile": True, "cuda_graphs": True}])
def test_compiled_paths_train_like_eager(options):
    eager, _, _ = _train(epochs=1)
    fast, _, _ = _train(epochs=1, **options)
    assert fast[0]["train_loss"] == pytest.approx(eager[0]["train_loss"], rel=1e-2)


def test_bf16_default_trains_with_fp32_master_weights():
    cfg = resolve(Config(model="resnet18", device="cuda"), "cuda")
    assert cfg.precision == "bf16"
    model = build_model(cfg, CUDA)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.stem[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_a_step_that_cannot_be_captured_is_one_clear_error():
    from archbench.errors import ArchbenchError
    from archbench.train.engine import TrainStep

    model = torch.nn.Linear(4, 2).to(CUDA)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def syncing(x):
        return model(x) * float(x.sum())  # reads a value back to the host: not capturable

    step = GraphedTrainStep(TrainStep(model, opt, CUDA, "fp32", syncing))
    with pytest.raises(
        ArchbenchError,
        match=r"reads values back to the host \(called a synchronizing CUDA operation\); train this model without "
        r"CUDA graphs \(--no-cuda-graphs\)$",
    ):
        step(torch.randn(8, 4, device=CUDA), torch.randint(0, 2, (8,), device=CUDA), Tally(CUDA))


def test_host_copy_of_cuda_tensors_is_pinned_and_equal():
    t = torch.randn(1000, device=CUDA)
    snap = host_copy({"t": t}, CUDA)["t"]
    assert snap.device.type == "cpu" and snap.is_pinned() and torch.equal(snap, t.cpu())


def test_bench_on_cuda_reports_peak_fraction_and_memory(tmp_path):
    from test_cli import archbench

    out = tmp_path / "bench.json"
    archbench(
        "bench",
        "resnet18",
        "--synthetic",
        "--device",
        "cuda",
        "--train-subset",
        "2048",
        "--test-subset",
        "1000",
        "--epochs",
        "1",
        "--quiet",
        "--json",
        out,
    )
    rows = {r["pipeline"]: r for r in json.loads(out.read_text())["results"]}
    assert rows["fast"]["peak_memory_mib"] > 0 and rows["fast"]["speedup"] > 1
    assert rows["fast"]["step"] == rows["reference"]["step"] == "graphs"  # the CUDA default
    if torch.cuda.get_device_name() in DEVICE_PEAKS:
        assert 0 < rows["fast"]["percent_of_peak"] < 100
        assert rows["fast"]["peak_basis"].endswith("bf16 tensor cores, dense")


def test_graphs_are_the_cuda_default_with_a_fallback():
    cfg = resolve(Config(model="resnet18", device="cuda"), "cuda")
    model = build_model(cfg, CUDA)
    step = build_step(model, build_optimizer(model, cfg, CUDA), cfg, CUDA)
    assert isinstance(step, GraphedTrainStep) and step.on_uncapturable is not None


def test_graphed_bf16_with_dropout_trains_like_eager_and_draws_new_masks_each_step():
    eager, _, _ = _train(epochs=1, model="vgg19_bn", precision="bf16")
    graphed, _, _ = _train(epochs=1, model="vgg19_bn", precision="bf16", cuda_graphs=True)
    # The graph's dropout draws continue the RNG as the eager step's do; bf16 and cuDNN's choices differ.
    assert graphed[0]["train_loss"] == pytest.approx(eager[0]["train_loss"], rel=1e-2)
    cfg = resolve(Config(model="vgg19_bn", batch_size=64, lr=1e-30, weight_decay=0.0, device="cuda"), "cuda")
    model = build_model(cfg, CUDA)
    step, tally = build_step(model, build_optimizer(model, cfg, CUDA), cfg, CUDA), Tally(CUDA)
    x, y = next(build_pipeline("fast", DATA, 64, 0, CUDA, fmt=input_format(cfg, CUDA)).train_batches(0))
    assert x.dtype == torch.bfloat16 and x.is_contiguous(memory_format=torch.channels_last)
    losses = []
    for _ in range(3):  # the same batch, weights all but unchanged: only dropout differs between steps
        tally.reset()
        step(x, y, tally)
        losses.append(float(tally.loss_sum))
    assert step_mode(step, cfg) == "graphs" and len(set(losses)) == 3, losses


def test_evaluation_reads_the_host_a_fixed_number_of_times():
    import warnings

    cfg = resolve(Config(model="resnet18", device="cuda"), "cuda")
    model = build_model(cfg, CUDA)

    def syncs(n_batches: int) -> int:
        data = [(torch.randn(16, 3, 32, 32, device=CUDA), torch.randint(0, 10, (16,), device=CUDA))] * n_batches
        exact = torch.ones(16 * n_batches, dtype=torch.bool, device=CUDA)
        evaluate(model, data, CUDA, exact, cfg.precision)  # cuDNN's algorithm search, outside the count
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as seen:
                warnings.simplefilter("always")
                evaluate(model, data, CUDA, exact, cfg.precision, keep_outputs=True)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in seen)

    assert syncs(2) == syncs(6) > 0


def test_a_run_resumed_under_graphs_continues_like_an_uninterrupted_one(tmp_path):
    from archbench.train import history
    from archbench.train.runner import Run

    base = Config(model="resnet18", epochs=2, milestones=(1,), batch_size=64, device="cuda", quiet=True)
    said = []
    Run(base, tmp_path / "straight", log=said.append).train(lambda: DATA)
    Run(base.replace(epochs=1), tmp_path / "resumed", log=said.append).train(lambda: DATA)
    Run(base, tmp_path / "resumed", log=said.append).train(lambda: DATA, resume=True)
    assert any(", CUDA graphs |" in line for line in said) and not any("warning" in line for line in said), said
    straight, resumed = history.read(tmp_path / "straight"), history.read(tmp_path / "resumed")
    assert [r["epoch"] for r in resumed] == [1, 2]
    for a, b in zip(straight, resumed, strict=True):  # cuDNN may time its way to other algorithms
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-2)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-2)


def test_a_step_that_cannot_be_captured_trains_eagerly_by_default():
    from archbench.train.engine import TrainStep

    model = torch.nn.Linear(4, 2).to(CUDA)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    before = model.weight.detach().clone()

    def syncing(x):
        return model(x) * float(x.sum())  # reads a value back to the host: not capturable

    said = []
    step, tally = (
        GraphedTrainStep(TrainStep(model, opt, CUDA, "fp32", syncing), on_uncapturable=said.append),
        Tally(CUDA),
    )
    for _ in range(3):
        step(torch.randn(8, 4, device=CUDA), torch.randint(0, 2, (8,), device=CUDA), tally)
    assert said == [
        "the training step cannot be captured as a CUDA graph: it reads values back to the host "
        "(called a synchronizing CUDA operation)"
    ]
    assert step.mode == "eager" and int(tally.step) == 3 and tally.images == 24
    assert not torch.equal(model.weight, before)


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_every_built_in_model_is_graphed_by_default_without_falling_back(name):
    def fail(line):
        pytest.fail(line)

    cfg = resolve(Config(model=name, batch_size=64, device="cuda"), "cuda")
    model = build_model(cfg, CUDA)
    step, tally = build_step(model, build_optimizer(model, cfg, CUDA), cfg, CUDA, warn=fail), Tally(CUDA)
    pipe = build_pipeline("fast", DATA, cfg.batch_size, cfg.seed, CUDA, fmt=input_format(cfg, CUDA))
    train_one_epoch(model, pipe.train_batches(0), step, CUDA, tally)
    assert step_mode(step, cfg) == "graphs" and int(tally.step) == 4


def test_a_failed_capture_reports_its_own_error_and_restores_the_stream():
    """In a process of its own: before torch 2.13 a failed capture leaves the CUDA RNG unusable."""
    import subprocess
    import sys

    code = (
        "import torch\n"
        "from archbench.train.graphs import CudaGraphs\n"
        "t = torch.ones(3, device='cuda')\n"
        "try:\n"
        "    CudaGraphs().capture(lambda: t.sum().item())\n"
        "except RuntimeError as e:\n"
        "    print('error:', str(e).splitlines()[0])\n"
        "print('stream restored:', torch.cuda.current_stream() == torch.cuda.default_stream())\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    # The body's own error (an illegal sync), not the one ending the failed capture raises after it.
    assert "error: " in p.stdout and "previous error during capture" not in p.stdout, p.stdout
    assert "stream restored: True" in p.stdout
