"""What archbench runs on: recorded once in ``comparison.json`` for the report, and printed
by ``archbench env`` and ``archbench --version`` for bug reports."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

from archbench import __version__
from archbench.data import fetch
from archbench.data.sources import CifarData
from archbench.errors import ArchbenchError
from archbench.io_utils import check_writable

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


def describe(device: torch.device, data: CifarData | None, wall_seconds: float) -> dict:
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


def _package_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def _mlflow_version() -> str:
    full = _package_version("mlflow")
    return full if full != "not installed" else _package_version("mlflow-skinny")


def _cudnn_version(v: int) -> str:
    """cuDNN's integer version as x.y.z (9.x counts minor versions in hundreds, 8.x in thousands)."""
    major, rest = divmod(v, 10_000) if v >= 90_000 else divmod(v, 1_000)
    return f"{major}.{rest // 100}.{rest % 100}"


def version_line() -> str:
    """``archbench --version``: the release, and the commit when running from a checkout."""
    commit = git_commit()
    return f"archbench {__version__}" + (f" (git {commit.replace(' (', ', ').rstrip(')')})" if commit else "")


def _devices() -> list[str]:
    found = [f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores"]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            found.append(
                f"cuda:{i}: {p.name}, {p.total_memory / 2**30:.0f} GiB, compute capability {p.major}.{p.minor}"
            )
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append("mps: available")
    return found


def _data_line(data_dir: str | None, download_missing: bool, offline: bool) -> str:
    from archbench.data import sources

    found = sources.find(data_dir)
    if found is not None:
        return f"found: {found.kind} at {found.path.resolve()}"
    target = sources.download_target(data_dir, download_missing)
    tried = ", ".join(str(p.resolve()) for _, p in sources.candidate_dirs(data_dir)[0])
    if target is None or offline:
        return f"not found (tried {tried}); a command needing it would stop with the ways to provide it"
    url = fetch.archive_url(sources.get_dataset("cifar10").url)  # env describes the default dataset
    return f"not found (tried {tried}); the first command needing it downloads {url} (170 MB) into {target.resolve()}"


def _cache_line() -> str:
    folder = fetch.user_cache_dir()
    named = f" (from {fetch.CACHE_VAR})" if os.environ.get(fetch.CACHE_VAR) else ""
    try:
        check_writable(folder / fetch.CACHE_SUBDIR / "probe")
    except ArchbenchError as e:
        return f"{folder}{named}: NOT writable — {e}"
    return f"{folder}{named}: writable"


def machine_report(data_dir: str | None = None, download_missing: bool = False, offline: bool = False) -> list[str]:
    """``archbench env``: what a bug report needs, one fact per line."""
    try:
        offline = offline or fetch.offline_from_env()
        network = "off (--offline or ARCHBENCH_OFFLINE)" if offline else "allowed for the CIFAR-10 download"
    except ArchbenchError as e:  # reported, not fatal: the rest of the report is what the user needs
        network = f"unknown: {e}"
    cuda = torch.version.cuda or "none (a CPU build)"
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    rows = [
        ("archbench", f"{version_line().removeprefix('archbench ')} at {PACKAGE_DIR}"),
        ("python", f"{platform.python_version()} ({platform.python_implementation()}, {sys.executable})"),
        ("platform", platform.platform()),
        ("torch", torch.__version__),
        ("torchvision", _package_version("torchvision")),
        ("CUDA", f"torch built with {cuda}; {visible} device(s) visible"),
        ("cuDNN", _cudnn_version(cudnn) if cudnn else "none"),
        ("devices", "; ".join(_devices())),
        ("CIFAR-10", _data_line(data_dir, download_missing, offline)),
        ("network", network),
        ("cache", _cache_line()),
        (
            "trackers",
            f"tensorboard {_package_version('tensorboard')}, mlflow {_mlflow_version()}, "
            f"wandb {_package_version('wandb')}",
        ),
    ]
    width = max(len(k) for k, _ in rows)
    return [f"{k + ':':<{width + 1}} {v}" for k, v in rows]
