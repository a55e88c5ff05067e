"""What a comparison ran on, recorded once in ``comparison.json`` for the report."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import torch

from archbench import __version__
from archbench.data.sources import Cifar10

GIT_TIMEOUT_S = 5


def git_commit() -> str | None:
    """The commit archbench's source was checked out at, when it runs from a git checkout."""
    try:
        p = subprocess.run(["git", "-C", str(Path(__file__).resolve().parent), "rev-parse", "HEAD"],
                           capture_output=True, text=True, timeout=GIT_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if p.returncode != 0:
        return None
    dirty = subprocess.run(["git", "-C", str(Path(__file__).resolve().parent), "status", "--porcelain",
                            "--untracked-files=no"], capture_output=True, text=True, timeout=GIT_TIMEOUT_S)
    return p.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({platform.processor() or platform.machine()})"


def describe(device: torch.device, data: Cifar10 | None, wall_seconds: float) -> dict:
    return {
        "archbench": __version__, "git commit": git_commit(), "torch": torch.__version__,
        "python": platform.python_version(), "device": device_name(device),
        "data": None if data is None else data.source,
        "data checksums": None if data is None else data.checksums,
        "test images": None if data is None else len(data.y_test),
        "wall time of compare (s)": round(wall_seconds, 1),
    }
