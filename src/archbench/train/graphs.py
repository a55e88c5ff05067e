"""Training steps replayed from CUDA graphs.

At batch 128 a CIFAR step is launch-bound: hundreds of small kernels, each costing
more CPU time to launch than GPU time to run. Capturing the whole step (forward,
backward, optimizer update and the on-device tally) once and replaying it makes a
step one launch.

Semantics are the eager step's. Before capture the whole step (forward, backward,
optimizer update, tally) runs on a side stream, as PyTorch's capture recipe warms up, so
every kernel and workspace the graph will use exists; then every value it changed
(weights, BN statistics, momentum buffers, the tally, the RNG) is put back. Momentum
buffers are created as zeros beforehand (SGD's first step on a zero buffer equals its
first step on none). The learning rate, which a graph bakes in, triggers a new capture
when it changes. Each batch shape gets its own graph, so the last partial batch of an
epoch is replayed too.

A step that cannot be captured (a model that reads values back to the host, say) is an
error when graphs were asked for, and otherwise — graphs being the CUDA default — one
warning line, after which the eager step trains the rest of the run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from archbench.errors import ArchbenchError
from archbench.train.engine import Tally, TrainStep

WARMUP_STEPS = 2  # whole steps on a side stream before capture (cuDNN/cuBLAS set-up), then undone


class CudaGraphs:
    """The CUDA calls a capture needs, in one place (tests stand in host equivalents)."""

    @contextmanager
    def side_stream(self) -> Iterator[None]:
        """Run the block on a fresh stream, ordered after and before the current one."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            yield
        torch.cuda.current_stream().wait_stream(side)

    def rng_state(self) -> torch.Tensor:
        return torch.cuda.get_rng_state()

    def set_rng_state(self, state: torch.Tensor) -> None:
        torch.cuda.set_rng_state(state)

    def capture(self, body: Callable[[], None]) -> Callable[[], None]:
        """Record ``body``'s kernels without running them; returns the replay."""
        graph = torch.cuda.CUDAGraph()
        # thread_local: the checkpoint writer or a DataLoader's pin-memory thread may
        # touch CUDA (events, pinned memory) while this thread captures.
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            body()
        torch.cuda.synchronize()
        return graph.replay


class GraphedTrainStep:
    """``eager``'s step replayed from CUDA graphs.

    ``on_capture_failure``: None makes a failed capture an error; otherwise it is called
    once with the reason, and every later step runs ``eager``.
    """

    def __init__(
        self,
        eager: TrainStep,
        cuda: CudaGraphs | None = None,
        on_capture_failure: Callable[[str], None] | None = None,
    ):
        self.eager = eager
        self.cuda = cuda or CudaGraphs()
        self.on_capture_failure = on_capture_failure
        self.failed: str | None = None  # why capture failed, once it has (steps are eager from then on)
        # (shape, dtype, lr) -> (replay, static input, static labels, {id(param): its grad})
        self.graphs: dict[tuple, tuple[Callable[[], None], torch.Tensor, torch.Tensor, dict]] = {}
        self._last_grads: dict = {}
        self.tally: Tally | None = None

    @property
    def mode(self) -> str:
        """What runs the steps: ``graphs``, or ``eager`` after a capture failed."""
        return "eager" if self.failed else "graphs"

    def _lr(self) -> tuple[float, ...]:
        return tuple(g["lr"] for g in self.eager.optimizer.param_groups)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, tally: Tally) -> None:
        if self.failed:
            return self.eager(x, y, tally)
        if tally is not self.tally:  # graphs write into the tally they were captured with
            self.graphs.clear()
            self.tally = tally
        key = (tuple(x.shape), x.dtype, self._lr())
        if key not in self.graphs:
            if any(k[2] != key[2] for k in self.graphs):
                self.graphs.clear()  # the learning rate changed: older graphs are stale
            graph = self._capture_or_explain(x, y, tally)
            if graph is None:
                return self.eager(x, y, tally)
            self.graphs[key] = graph
        replay, static_x, static_y, self._last_grads = self.graphs[key]
        static_x.copy_(x)
        static_y.copy_(y)
        replay()
        tally.images += y.shape[0]

    def grads_of(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        """The gradients the last step wrote (each graph has its own)."""
        if self.failed:
            return self.eager.grads_of(params)
        return [self._last_grads[id(p)] for p in params]

    def _capture_or_explain(self, x: torch.Tensor, y: torch.Tensor, tally: Tally):
        """The step's graph; None once a capture failed and the eager step takes over."""
        self._warm_up(x, y, tally)  # a model's own error is raised here, as the eager step would
        static_x, static_y = x.clone(), y.clone()
        model = self.eager.model
        self.eager.optimizer.zero_grad(set_to_none=True)  # gradients are allocated inside the graph's pool
        rng = self.cuda.rng_state()
        try:
            replay = self.cuda.capture(lambda: self.eager.compute(static_x, static_y, tally))
        except RuntimeError as e:  # e.g. an operation that syncs with the host, or a custom model's
            first_line = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            reason = f"capturing the training step as a CUDA graph failed ({first_line})"
            if self.on_capture_failure is None:
                raise ArchbenchError(f"{reason}; run without --cuda-graphs") from e
            self.failed = reason
            self.graphs.clear()
            self.eager.optimizer.zero_grad(set_to_none=True)  # no gradient may live in the failed graph's pool
            self.cuda.set_rng_state(rng)  # the eager steps draw what they would have drawn
            self.on_capture_failure(reason)
            return None
        grads = {id(p): p.grad for p in model.parameters()}
        return replay, static_x, static_y, grads

    def _warm_up(self, x: torch.Tensor, y: torch.Tensor, tally: Tally) -> None:
        """Run whole steps on ``x``, ``y``, then put back every value they changed."""
        model, opt = self.eager.model, self.eager.optimizer
        _ensure_momentum_buffers(opt)
        changed = [*model.parameters(), *model.buffers(), *_optimizer_tensors(opt), *tally.tensors()]
        with torch.no_grad():
            saved = [t.detach().clone() for t in changed]
        saved_rng = self.cuda.rng_state()
        with self.cuda.side_stream():
            for _ in range(WARMUP_STEPS):
                opt.zero_grad(set_to_none=True)
                self.eager.compute(x, y, tally)
        with torch.no_grad():
            for t, before in zip(changed, saved):
                t.copy_(before)
        self.cuda.set_rng_state(saved_rng)


def _optimizer_tensors(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [t for state in opt.state.values() for t in state.values() if torch.is_tensor(t)]


def _ensure_momentum_buffers(opt: torch.optim.Optimizer) -> None:
    """Create absent SGD momentum buffers as zeros, so the capture does not allocate them."""
    for group in opt.param_groups:
        if not group.get("momentum"):
            continue
        for p in group["params"]:
            state = opt.state[p]
            if state.get("momentum_buffer") is None:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
