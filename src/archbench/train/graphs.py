"""Training steps replayed from CUDA graphs.

At batch 128 a CIFAR step is launch-bound: hundreds of small kernels, each costing
more CPU time to launch than GPU time to run. Capturing the whole step (forward,
backward, optimizer update and the on-device tally) once and replaying it makes a
step one launch.

Semantics are the eager step's. Before capture the whole step (forward, backward,
optimizer update, tally) runs on a side stream, as PyTorch's capture recipe warms up, so
every kernel the graph will use has run once; then every value it changed (weights, BN
statistics, momentum buffers, the tally, the CUDA RNG) is put back. Momentum buffers are
created as zeros beforehand (SGD's first step on a zero buffer equals its first step on
none). The learning rate, which a graph bakes in, triggers a new capture when it changes.
Each batch shape gets its own graph, so the last partial batch of an epoch is replayed too.

The last warm-up step runs with host syncs made errors: a step that reads a value back to
the host cannot be captured, and finding that out before capturing leaves nothing of a
failed capture behind (a failed capture can leave the stream, the allocator and, before
torch 2.13, the CUDA RNG in a state no later step should run on). Such a step is an error
when graphs were asked for; by default it is one warning, after which the eager step
trains the rest of the run. A capture that fails for another reason is always an error.
Host-side behaviour (Python randomness, counters) is frozen into a graph at capture: the
package's own models have none; graphs are a model author's choice for other models.
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
        try:
            with torch.cuda.stream(side):
                yield
        finally:  # what follows, an undo after an error included, runs after the block's kernels
            torch.cuda.current_stream().wait_stream(side)

    def rng_state(self) -> torch.Tensor:
        return torch.cuda.get_rng_state()

    def set_rng_state(self, state: torch.Tensor) -> None:
        torch.cuda.set_rng_state(state)

    @contextmanager
    def no_host_syncs(self) -> Iterator[None]:
        """Make any operation that waits for the GPU raise (``SYNC_ERROR`` in its message)."""
        previous = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode(previous)

    def capture(self, body: Callable[[], None]) -> Callable[[], None]:
        """Record ``body``'s kernels without running them; returns the replay."""
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.current_stream()
        raised: list[BaseException] = []

        def recorded() -> None:
            try:
                body()
            except BaseException as e:
                raised.append(e)
                raise

        try:
            # thread_local: the checkpoint writer or a DataLoader's pin-memory thread may
            # touch CUDA (events, pinned memory) while this thread captures.
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                recorded()
        except RuntimeError as e:
            # Ending a failed capture raises again, hiding the body's error, which is the cause.
            if raised and raised[0] is not e:
                raise raised[0] from e
            raise
        finally:
            torch.cuda.set_stream(stream)  # a failed end of capture skips switching back
        torch.cuda.synchronize()
        return graph.replay


SYNC_ERROR = "synchronizing CUDA operation"  # in the error torch raises for a host sync under no_host_syncs()


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


class GraphedTrainStep:
    """``eager``'s step replayed from CUDA graphs.

    ``on_uncapturable``: None makes a step that syncs with the host an error; otherwise it
    is called once with the reason, and every later step runs ``eager``.
    """

    def __init__(
        self,
        eager: TrainStep,
        cuda: CudaGraphs | None = None,
        on_uncapturable: Callable[[str], None] | None = None,
    ):
        self.eager = eager
        self.cuda = cuda or CudaGraphs()
        self.on_uncapturable = on_uncapturable
        self.uncapturable: str | None = None  # why, once found (steps are eager from then on)
        # (shape, dtype, lr) -> (replay, static input, static labels, {id(param): its grad})
        self.graphs: dict[tuple, tuple[Callable[[], None], torch.Tensor, torch.Tensor, dict]] = {}
        self._last_grads: dict = {}
        self.tally: Tally | None = None

    @property
    def mode(self) -> str:
        """What runs the steps: ``graphs``, or ``eager`` once the step proved uncapturable."""
        return "eager" if self.uncapturable else "graphs"

    def _lr(self) -> tuple[float, ...]:
        return tuple(g["lr"] for g in self.eager.optimizer.param_groups)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, tally: Tally) -> None:
        if self.uncapturable:
            return self.eager(x, y, tally)
        if tally is not self.tally:  # graphs write into the tally they were captured with
            self.graphs.clear()
            self.tally = tally
        key = (tuple(x.shape), x.dtype, self._lr())
        if key not in self.graphs:
            if any(k[2] != key[2] for k in self.graphs):
                self.graphs.clear()  # the learning rate changed: older graphs are stale
            graph = self._graph_for(x, y, tally)
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
        if self.uncapturable:
            return self.eager.grads_of(params)
        return [self._last_grads[id(p)] for p in params]

    def _graph_for(self, x: torch.Tensor, y: torch.Tensor, tally: Tally):
        """The step's graph for batches like ``x``; None once the step proved uncapturable."""
        why = self._warm_up(x, y, tally)  # a model's own error is raised here, as the eager step would
        if why is not None:
            reason = f"the training step cannot be captured as a CUDA graph: it reads values back to the host ({why})"
            if self.on_uncapturable is None:
                raise ArchbenchError(f"{reason}; train this model without CUDA graphs (--no-cuda-graphs)")
            self.uncapturable = reason
            self.graphs.clear()
            self.on_uncapturable(reason)
            return None
        try:
            return self._capture(x, y, tally)
        except RuntimeError as e:  # an operation a capture cannot hold, though it does not sync
            raise ArchbenchError(
                f"capturing the training step as a CUDA graph failed ({_first_line(e)}); "
                f"train this model without CUDA graphs (--no-cuda-graphs)"
            ) from e

    def _capture(self, x: torch.Tensor, y: torch.Tensor, tally: Tally):
        static_x, static_y = x.clone(), y.clone()
        self.eager.optimizer.zero_grad(set_to_none=True)  # gradients are allocated inside the graph's pool
        replay = self.cuda.capture(lambda: self.eager.compute(static_x, static_y, tally))
        grads = {id(p): p.grad for p in self.eager.model.parameters()}
        return replay, static_x, static_y, grads

    def _warm_up(self, x: torch.Tensor, y: torch.Tensor, tally: Tally) -> str | None:
        """Run whole steps on ``x``, ``y``, the last with host syncs made errors, then put back
        every value they changed. Returns the host sync the last one hit, if any."""
        model, opt = self.eager.model, self.eager.optimizer
        _ensure_momentum_buffers(opt)
        changed = [*model.parameters(), *model.buffers(), *_optimizer_tensors(opt), *tally.tensors()]
        with torch.no_grad():
            saved = [t.detach().clone() for t in changed]
        saved_rng = self.cuda.rng_state()
        sync = None
        try:
            with self.cuda.side_stream():
                for i in range(WARMUP_STEPS):
                    opt.zero_grad(set_to_none=True)
                    if i < WARMUP_STEPS - 1:  # the first may set up (cuDNN's algorithm search syncs)
                        self.eager.compute(x, y, tally)
                        continue
                    try:
                        with self.cuda.no_host_syncs():
                            self.eager.compute(x, y, tally)
                    except RuntimeError as e:
                        if SYNC_ERROR not in str(e):
                            raise
                        sync = _first_line(e)
        finally:
            with torch.no_grad():
                for t, before in zip(changed, saved):
                    t.copy_(before)
            self.cuda.set_rng_state(saved_rng)
            opt.zero_grad(set_to_none=True)
        return sync


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
