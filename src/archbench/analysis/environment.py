"""What a comparison ran on, recorded once in ``comparison.json`` for the report."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import torch

from archbench import __version__
from archbench.data.sources import Cifar10

GIT_TIMEOUT_S = 5
PACKAGE_DIR = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str | None:
    try:
        p = subprocess.run(
            ["git", "-C", str(PACKAGE_DIR), *args], capture_output=True, text=True, timeout=GIT_TIMEOUT_S
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return p.stdout.strip() if p.returncode == 0 else None


def git_commit() -> str | None:
    """The commit of archbench's own checkout, when it runs from one (not of a repository
    that merely contains an installed copy)."""
    top = _git("rev-parse", "--show-toplevel")
    if top is None or PACKAGE_DIR != Path(top).resolve() / "src" / "archbench":
        return None
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return None
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return commit + (" (with uncommitted changes)" if dirty else "")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({platform.processor() or platform.machine()})"


def describe(device: torch.device, data: Cifar10 | None, wall_seconds: float) -> dict:
    return {
        "archbench": __version__,
        "git commit": git_commit(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": device_name(device),
        "data": None if data is None else data.source,
        "data checksums": None if data is None else data.checksums,
        "test images": None if data is None else len(data.y_test),
        "wall time of compare (s)": round(wall_seconds, 1),
    }
