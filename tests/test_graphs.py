"""The graphed training step's bookkeeping, on the host, against the eager step.

A CUDA graph records a step's kernels without running them and replays them on the
tensors it recorded. ``HostGraphs`` does the same with host code: its capture runs the
step and then puts back every tensor the step changed (a capture runs nothing), and its
replay runs the step again, writing the gradients into the tensors that graph owns.
With it the rest of ``GraphedTrainStep`` — warm-up undone, momentum buffers made
beforehand, one graph per batch shape, a new capture when the learning rate changes,
the tally it writes into, the gradients ``grads_of`` returns — runs on CPU and must
train bit for bit like the eager step. tests/test_cuda.py checks the real graphs.
"""

from contextlib import nullcontext

import pytest
import torch

import tiny_model
from archbench.config import Config, resolve
from archbench.data.pipelines import build_pipeline
from archbench.train.engine import Tally, TrainStep, train_one_epoch
from archbench.train.gradflow import GradFlow
from archbench.train.graphs import CudaGraphs, GraphedTrainStep
from archbench.train.training import build_model, build_optimizer
from conftest import synthetic

CPU = torch.device("cpu")


class HostGraphs(CudaGraphs):
    def __init__(self, model, opt, tally):
        self.model, self.opt, self.tally = model, opt, tally
        self.captures = 0

    def side_stream(self):
        return nullcontext()

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


def _train(model_name: str, graphed: bool):
    cfg = resolve(Config(model=model_name, batch_size=16, lr=0.05, device="cpu"), "cpu")
    model = build_model(cfg, CPU)
    opt = build_optimizer(model, cfg, CPU)
    tally = Tally(CPU)
    step = TrainStep(model, opt, CPU, cfg.precision)
    if graphed:
        host = HostGraphs(model, opt, tally)
        step = GraphedTrainStep(step, host)
    pipe = build_pipeline("fast", synthetic(40, 8), cfg.batch_size, cfg.seed, CPU)  # batches 16, 16, 8
    grads = GradFlow(model, 3, 3)
    torch.manual_seed(1)  # dropout's draws
    epochs, norms = [], []
    for epoch in range(3):
        for g in opt.param_groups:
            g["lr"] = 0.05 if epoch < 2 else 0.005
        epochs.append(
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
    return model, opt, epochs, norms, (host.captures if graphed else None)


@pytest.mark.slow
@pytest.mark.parametrize("model_name", ["resnet18", tiny_model.NAME])  # tiny: dropout draws too
def test_graphed_step_trains_bit_for_bit_like_the_eager_step(model_name, monkeypatch):
    from archbench.models.registry import MODELS

    monkeypatch.setitem(MODELS, tiny_model.NAME, tiny_model.SPEC)
    model_e, opt_e, epochs_e, norms_e, _ = _train(model_name, graphed=False)
    model_g, opt_g, epochs_g, norms_g, captures = _train(model_name, graphed=True)
    assert captures == 4  # full and partial batch, at each of the two learning rates
    for e, g in zip(epochs_e, epochs_g):
        assert (e["loss"], e["acc"], e["images"]) == (g["loss"], g["acc"], g["images"])
    for (name, a), b in zip(model_e.state_dict().items(), model_g.state_dict().values()):
        assert torch.equal(a, b), name  # includes BN statistics and batch counters
    for p_e, p_g in zip(model_e.parameters(), model_g.parameters()):
        assert torch.equal(opt_e.state[p_e]["momentum_buffer"], opt_g.state[p_g]["momentum_buffer"])
    assert norms_e == norms_g and len(norms_g) == 9  # the gradients of the graph that just ran


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
