"""Training steps replayed from CUDA graphs.

At batch 128 a CIFAR step is launch-bound: hundreds of small kernels, each costing
more CPU time to launch than GPU time to run. Capturing the whole step (forward,
backward, optimizer update and the on-device tally) once and replaying it makes a
step one launch.

Semantics are the eager step's: the capture does a forward/backward warm-up whose side
effects (BN running statistics, RNG, gradients) are undone, the optimizer's momentum
buffers are created as zeros beforehand (SGD's first step on a zero buffer equals its
first step on none), and the learning rate, which a graph bakes in, triggers a new
capture when it changes. Each batch shape gets its own graph, so the last partial
batch of an epoch is replayed too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from archbench.errors import ArchbenchError
from archbench.train.engine import Tally, TrainStep, autocast

WARMUP_STEPS = 2  # forward/backward passes on a side stream before capture (cuDNN/cuBLAS set-up)


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
    def __init__(self, eager: TrainStep, cuda: CudaGraphs | None = None):
        self.eager = eager
        self.cuda = cuda or CudaGraphs()
        # (shape, dtype, lr) -> (replay, static input, static labels, {id(param): its grad})
        self.graphs: dict[tuple, tuple[Callable[[], None], torch.Tensor, torch.Tensor, dict]] = {}
        self._last_grads: dict = {}
        self.tally: Tally | None = None

    def _lr(self) -> tuple[float, ...]:
        return tuple(g["lr"] for g in self.eager.optimizer.param_groups)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, tally: Tally) -> None:
        if tally is not self.tally:  # graphs write into the tally they were captured with
            self.graphs.clear()
            self.tally = tally
        key = (tuple(x.shape), x.dtype, self._lr())
        if key not in self.graphs:
            if any(k[2] != key[2] for k in self.graphs):
                self.graphs.clear()  # the learning rate changed: older graphs are stale
            self.graphs[key] = self._capture_or_explain(x, y, tally)
        replay, static_x, static_y, self._last_grads = self.graphs[key]
        static_x.copy_(x)
        static_y.copy_(y)
        replay()
        tally.images += y.shape[0]

    def grads_of(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        """The gradients the last replayed graph wrote (each graph has its own)."""
        return [self._last_grads[id(p)] for p in params]

    def _capture_or_explain(self, x: torch.Tensor, y: torch.Tensor, tally: Tally):
        try:
            return self._capture(x, y, tally)
        except RuntimeError as e:  # e.g. an operation that syncs with the host, or a custom model's
            first_line = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise ArchbenchError(
                f"capturing the training step as a CUDA graph failed ({first_line}); run without --cuda-graphs"
            ) from e

    def _capture(self, x: torch.Tensor, y: torch.Tensor, tally: Tally):
        model, opt = self.eager.model, self.eager.optimizer
        _ensure_momentum_buffers(opt)
        static_x, static_y = x.clone(), y.clone()
        saved_buffers = [b.clone() for b in model.buffers()]
        saved_rng = self.cuda.rng_state()
        with self.cuda.side_stream():
            for _ in range(WARMUP_STEPS):
                opt.zero_grad(set_to_none=True)
                with autocast(self.eager.device, self.eager.precision):
                    logits = self.eager.forward(static_x)
                torch.nn.functional.cross_entropy(logits.float(), static_y).backward()
        with torch.no_grad():  # undo the warm-up: BN statistics, batch counters, RNG
            for b, saved in zip(model.buffers(), saved_buffers):
                b.copy_(saved)
        self.cuda.set_rng_state(saved_rng)
        opt.zero_grad(set_to_none=True)  # gradients are allocated inside the graph's pool
        replay = self.cuda.capture(lambda: self.eager.compute(static_x, static_y, tally))
        grads = {id(p): p.grad for p in model.parameters()}
        return replay, static_x, static_y, grads


def _ensure_momentum_buffers(opt: torch.optim.Optimizer) -> None:
    """Create absent SGD momentum buffers as zeros, so the capture does not allocate them."""
    for group in opt.param_groups:
        if not group.get("momentum"):
            continue
        for p in group["params"]:
            state = opt.state[p]
            if state.get("momentum_buffer") is None:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
