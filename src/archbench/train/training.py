"""Building what a training run needs from its config: model, optimizer, step, device.

Shared by ``runner`` (runs with checkpoints and history) and ``bench`` (timing only),
so both train exactly the same way.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch
import torch.nn as nn

from archbench.config import Config
from archbench.data.datasets import get as get_dataset
from archbench.data.pipelines import InputFormat
from archbench.errors import ArchbenchError
from archbench.models.registry import MODELS
from archbench.models.specs import resolve as resolve_model


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ArchbenchError("--device cuda asked for, but PyTorch sees no CUDA GPU; use --device auto or cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ArchbenchError("--device mps asked for, but MPS is not available; use --device auto or cpu")
    return torch.device(name)


def check_device_options(cfg: Config, device: torch.device) -> None:
    if cfg.cuda_graphs is True and device.type != "cuda":
        raise ArchbenchError(
            f"--cuda-graphs needs a CUDA device, but the run is on {device.type}; "
            f"drop --cuda-graphs or use --device cuda"
        )


def channels_last(device: torch.device) -> bool:
    """NHWC activations feed cuDNN's tensor-core convolutions; elsewhere they do not pay."""
    return device.type == "cuda"


def own_model(cfg: Config) -> bool:
    """One of the package's models: each starts with a convolution and keeps no host-side state,
    and tests/test_graphs.py trains every one graphed like eager. Input formats and CUDA graphs
    are only chosen for a model without being asked for when this holds; an installed package's
    model, or one registered from outside, is not the package's own."""
    if cfg.model_spec is not None:
        return False
    spec = MODELS.get(cfg.model)
    return spec is not None and getattr(spec.build, "__module__", "").startswith("archbench.models.")


def input_format(cfg: Config, device: torch.device) -> InputFormat:
    """What the fast pipeline hands the model: for the package's own models, bf16 batches under
    bf16 autocast (what their first convolution would cast to) and NHWC on CUDA; float32 NCHW,
    what any model takes, for others."""
    if not own_model(cfg):
        return InputFormat()
    return InputFormat(torch.bfloat16 if cfg.precision == "bf16" else torch.float32, channels_last(device))


def build_model(cfg: Config, device: torch.device) -> nn.Module:
    """The config's model for its dataset's class count, initialised from its seed."""
    torch.manual_seed(cfg.seed)  # the model's initial weights come from the seed
    spec = resolve_model(cfg.model, cfg.model_spec)
    model = spec.build(num_classes=get_dataset(cfg.dataset).num_classes).to(device)
    if channels_last(device):
        model = model.to(memory_format=torch.channels_last)
    return model


def build_optimizer(model: nn.Module, cfg: Config, device: torch.device) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, **optimizer_impl(device)
    )


def optimizer_impl(device: torch.device) -> dict:
    """One fused kernel for the whole update on CUDA; PyTorch's default elsewhere."""
    return {"fused": True} if device.type == "cuda" else {}


def adopt_optimizer_impl(opt: torch.optim.Optimizer, device: torch.device) -> None:
    """After loading a checkpoint made on another device, use this device's implementation."""
    impl = optimizer_impl(device)
    for group in opt.param_groups:
        group["fused"] = impl.get("fused", False)
        group["foreach"] = None


def use_fastest_convolutions(device: torch.device) -> None:
    """Let cuDNN time its convolution algorithms once per shape and keep the fastest.

    A run has three input shapes (full batch, last partial batch, evaluation batch), so
    the timing is paid a few times at the start. With CUDA graphs it happens in the
    warm-up passes, before capture.
    """
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def uses_cuda_graphs(cfg: Config, device: torch.device) -> bool:
    """Graphs when asked for, and by default for the package's own models on CUDA, where a step
    is then one launch instead of hundreds."""
    return cfg.cuda_graphs is True or (cfg.cuda_graphs is None and device.type == "cuda" and own_model(cfg))


def build_step(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    cfg: Config,
    device: torch.device,
    warn: Callable[[str], None] = _to_stderr,
) -> Callable:
    """The training step ``cfg`` asks for on ``device``.

    With graphs by default (``cuda_graphs`` unset), a step that syncs with the host, which no
    graph can hold, is trained eagerly after ``warn`` gets one line saying so; with graphs
    asked for, it is an error.
    """
    from archbench.train.engine import TrainStep

    use_fastest_convolutions(device)
    # One graph per batch shape, like the CUDA graphs: a guessed dynamic shape at the last
    # partial batch would recompile the model into slower, shape-generic kernels.
    forward = torch.compile(model, dynamic=False) if cfg.compile else None
    step = TrainStep(model, opt, device, cfg.precision, forward)
    if not uses_cuda_graphs(cfg, device):
        return step
    from archbench.train.graphs import GraphedTrainStep

    if cfg.cuda_graphs is True:
        return GraphedTrainStep(step)

    def fall_back(reason: str) -> None:
        warn(f"[{cfg.model}] warning: {reason}; training without CUDA graphs (--no-cuda-graphs skips the attempt)")

    return GraphedTrainStep(step, on_uncapturable=fall_back)


def step_mode(step: Callable, cfg: Config) -> str:
    """How ``step`` runs: eager, graphs, compile or compile+graphs (eager once a step proved uncapturable)."""
    mode = getattr(step, "mode", "eager")
    return f"compile+{mode}" if cfg.compile and mode == "graphs" else ("compile" if cfg.compile else mode)


def step_options(cfg: Config, device: torch.device) -> str:
    """The speed options a run starts with, for its first log line (``, compiled, CUDA graphs``)."""
    return (", compiled" if cfg.compile else "") + (", CUDA graphs" if uses_cuda_graphs(cfg, device) else "")
