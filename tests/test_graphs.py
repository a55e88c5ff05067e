"""The graphed training step's bookkeeping, on the host, against the eager step.

A CUDA graph records a step's kernels without running them and replays them on the
tensors it recorded. ``HostGraphs`` does the same with host code: its capture runs the
step and then puts back every tensor the step changed (a capture runs nothing), and its
replay runs the step again, writing the gradients into the tensors that graph owns.
With it the rest of ``GraphedTrainStep`` — whole-step warm-up undone, momentum buffers
made beforehand, one graph per batch shape, a new capture when the learning rate changes,
the tally it writes into, the gradients ``grads_of`` returns, the eager step taking over
from a step that syncs with the host (``no_host_syncs`` raises on the ops that would) —
runs on CPU and must train bit for bit like the eager step, for every registered model.
tests/test_cuda.py checks the real graphs.
"""

from contextlib import nullcontext

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import tiny_model
from archbench.config import Config, resolve
from archbench.data.pipelines import build_pipeline
from archbench.errors import ArchbenchError
from archbench.models.registry import MODELS
from archbench.train.engine import Tally, TrainStep, train_one_epoch
from archbench.train.gradflow import GradFlow
from archbench.train.graphs import SYNC_ERROR, WARMUP_STEPS, CudaGraphs, GraphedTrainStep, _ensure_momentum_buffers
from archbench.train.training import build_model, build_optimizer
from conftest import synthetic

CPU = torch.device("cpu")


class SyncsRaise(TorchDispatchMode):
    """Raises, as torch does for CUDA under ``set_sync_debug_mode("error")``, on the ops that read the host."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if any(k in str(func) for k in ("_local_scalar_dense", "nonzero", "masked_select")):
            raise RuntimeError(f"called a {SYNC_ERROR}")
        return func(*args, **(kwargs or {}))


class HostGraphs(CudaGraphs):
    def __init__(self, model, opt, tally):
        self.model, self.opt, self.tally = model, opt, tally
        self.captures = 0

    def side_stream(self):
        return nullcontext()

    def no_host_syncs(self):
        return SyncsRaise()

    def rng_state(self):
        return torch.get_rng_state()

    def set_rng_state(self, state):
        torch.set_rng_state(state)

    def _state(self) -> list[torch.Tensor]:
        opt_state = [t for s in self.opt.state.values() for t in s.values() if torch.is_tensor(t)]
        tally = [self.tally.loss_sum, self.tally.correct, self.tally.step, self.tally.first_bad]
        return [*self.model.parameters(), *self.model.buffers(), *opt_state, *tally]

    def capture(self, body):
        self.captures += 1
        params = list(self.model.parameters())
        before = [t.detach().clone() for t in self._state()]
        rng = torch.get_rng_state()
        body()  # allocates the gradients, as a capture does...
        with torch.no_grad():  # ...but leaves every value as it was
            for t, saved in zip(self._state(), before):
                t.copy_(saved)
        torch.set_rng_state(rng)
        grads = [p.grad for p in params]

        def replay():  # writes this graph's gradients; what ``p.grad`` refers to is left alone
            bound = [p.grad for p in params]
            for p in params:
                p.grad = None
            body()
            for p, g, b in zip(params, grads, bound):
                g.copy_(p.grad)
                p.grad = b

        return replay


def _train(model_name: str, graphed: bool, precision="fp32", epochs=3, images=40, batch=16, reads_host=False):
    """``epochs`` epochs at a learning rate that drops for the last one; graphed on ``HostGraphs``
    by default (a step that reads the host is trained eagerly after a warning)."""
    cfg = resolve(Config(model=model_name, batch_size=batch, lr=0.05, device="cpu", precision=precision), "cpu")
    model = build_model(cfg, CPU)
    opt = build_optimizer(model, cfg, CPU)
    tally = Tally(CPU)
    step = TrainStep(model, opt, CPU, cfg.precision, _checking_input(model) if reads_host else None)
    warnings = []
    if graphed:
        host = HostGraphs(model, opt, tally)
        step = GraphedTrainStep(step, host, on_uncapturable=warnings.append)
    pipe = build_pipeline("fast", synthetic(images, 8), cfg.batch_size, cfg.seed, CPU)
    grads = GradFlow(model, 3, 3)
    torch.manual_seed(1)  # dropout's draws
    results, norms = [], []
    for epoch in range(epochs):
        for g in opt.param_groups:
            g["lr"] = 0.05 if epoch < epochs - 1 else 0.005
        results.append(
            train_one_epoch(
                model,
                pipe.train_batches(epoch),
                step,
                CPU,
                tally,
                after_step=lambda i: grads.after_step(i, step.grads_of),
            )
        )
        norms += grads.take(epoch + 1)
    return model, opt, results, norms, (host.captures if graphed else None), warnings


def _checking_input(model):
    """``model`` behind a check that reads a value back to the host: no graph can hold it."""

    def forward(x):
        if torch.isnan(x).any():
            raise ValueError("NaN in the input")
        return model(x)

    return forward


class FailingHostGraphs(HostGraphs):
    def capture(self, body):
        self.captures += 1
        raise RuntimeError("operation not permitted when stream is capturing\nsecond line")


def _assert_same_training(eager, graphed, steps_recorded):
    model_e, opt_e, epochs_e, norms_e = eager[:4]
    model_g, opt_g, epochs_g, norms_g = graphed[:4]
    for e, g in zip(epochs_e, epochs_g, strict=True):
        assert (e["loss"], e["acc"], e["images"]) == (g["loss"], g["acc"], g["images"])
    for (name, a), b in zip(model_e.state_dict().items(), model_g.state_dict().values()):
        assert torch.equal(a, b), name  # includes BN statistics and batch counters
    for p_e, p_g in zip(model_e.parameters(), model_g.parameters()):
        assert torch.equal(opt_e.state[p_e]["momentum_buffer"], opt_g.state[p_g]["momentum_buffer"])
    assert norms_e == norms_g and len(norms_g) == steps_recorded  # the gradients of the graph that just ran


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_graphed_step_trains_bit_for_bit_like_the_eager_step(precision, monkeypatch):
    """Three epochs with dropout (the tiny model), gradient norms read between steps."""
    monkeypatch.setitem(MODELS, tiny_model.NAME, tiny_model.SPEC)
    eager = _train(tiny_model.NAME, graphed=False, precision=precision)
    graphed = _train(tiny_model.NAME, graphed=True, precision=precision)
    assert graphed[4] == 4  # full and partial batch, at each of the two learning rates
    _assert_same_training(eager, graphed, 9)


@pytest.mark.slow
@pytest.mark.parametrize("model_name", list(MODELS))
def test_every_registered_model_trains_alike_graphed_and_eager(model_name):
    """Two short epochs (a full and a partial batch each, the learning rate changing between them)."""
    eager = _train(model_name, graphed=False, epochs=2, images=6, batch=4)
    graphed = _train(model_name, graphed=True, epochs=2, images=6, batch=4)
    assert graphed[4] == 4
    _assert_same_training(eager, graphed, 4)


def test_a_step_that_reads_the_host_trains_eagerly_after_one_warning(monkeypatch):
    """Graphs by default: the run goes on, exactly as an eager run would, and nothing is captured."""
    monkeypatch.setitem(MODELS, tiny_model.NAME, tiny_model.SPEC)
    eager = _train(tiny_model.NAME, graphed=False, reads_host=True)
    fell_back = _train(tiny_model.NAME, graphed=True, reads_host=True)
    assert fell_back[4] == 0, "the host read was found before any capture"
    assert fell_back[5] == [
        "the training step cannot be captured as a CUDA graph: it reads values back to the host "
        f"(called a {SYNC_ERROR})"
    ]
    _assert_same_training(eager, fell_back, 9)  # the warm-up that found it left no trace


def _one_step(host_graphs, on_uncapturable=None, reads_host=False):
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setitem(MODELS, tiny_model.NAME, tiny_model.SPEC)
    try:
        cfg = resolve(Config(model=tiny_model.NAME, batch_size=8, device="cpu"), "cpu")
        model = build_model(cfg, CPU)
        opt = build_optimizer(model, cfg, CPU)
        tally = Tally(CPU)
        forward = _checking_input(model) if reads_host else None
        step = GraphedTrainStep(
            TrainStep(model, opt, CPU, "fp32", forward), host_graphs(model, opt, tally), on_uncapturable
        )
        step(torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)), tally)
    finally:
        monkeypatch.undo()


def test_a_step_that_reads_the_host_is_an_error_when_graphs_were_asked_for():
    with pytest.raises(ArchbenchError) as e:
        _one_step(HostGraphs, reads_host=True)
    assert str(e.value) == (
        f"the training step cannot be captured as a CUDA graph: it reads values back to the host (called a "
        f"{SYNC_ERROR}); train this model without CUDA graphs (--no-cuda-graphs)"
    )


@pytest.mark.parametrize("asked_for", [True, False])
def test_a_capture_that_fails_otherwise_is_an_error_even_by_default(asked_for):
    """A failed capture may leave CUDA state that no eager step should run on."""
    said = []
    with pytest.raises(ArchbenchError) as e:
        _one_step(FailingHostGraphs, None if asked_for else said.append)
    assert str(e.value) == (
        "capturing the training step as a CUDA graph failed (operation not permitted when stream is capturing); "
        "train this model without CUDA graphs (--no-cuda-graphs)"
    )
    assert said == []


def test_the_warm_up_runs_whole_steps_then_undoes_them(monkeypatch):
    """The optimizer update and the tally run before capture too, so their kernels and buffers exist."""
    cfg = resolve(Config(model="resnet18", batch_size=4, device="cpu"), "cpu")
    model = build_model(cfg, CPU)
    opt = build_optimizer(model, cfg, CPU)
    tally = Tally(CPU)
    host = HostGraphs(model, opt, tally)
    calls = []
    real_step = opt.step
    monkeypatch.setattr(opt, "step", lambda *a, **k: (calls.append(tally.step.clone()), real_step(*a, **k))[1])
    _ensure_momentum_buffers(opt)  # as the graphed step does first, so that they are in the state compared
    before = [t.clone() for t in host._state()]
    captured = []
    monkeypatch.setattr(
        host, "capture", lambda body: captured.append([t.clone() for t in host._state()]) or (lambda: None)
    )
    GraphedTrainStep(TrainStep(model, opt, CPU), host)(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)), tally)
    assert [int(c) for c in calls] == list(range(WARMUP_STEPS)), "each warm-up step updates weights and tally"
    assert len(captured) == 1 and all(torch.equal(a, b) for a, b in zip(before, captured[0], strict=True))


def test_a_new_tally_gets_new_graphs():
    cfg = resolve(Config(model="resnet18", batch_size=8, device="cpu"), "cpu")
    model = build_model(cfg, CPU)
    opt = build_optimizer(model, cfg, CPU)
    first, second = Tally(CPU), Tally(CPU)
    host = HostGraphs(model, opt, first)
    step = GraphedTrainStep(TrainStep(model, opt, CPU), host)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    step(x, y, first)
    host.tally = second
    step(x, y, second)
    assert host.captures == 2 and int(first.step) == 1 and int(second.step) == 1
