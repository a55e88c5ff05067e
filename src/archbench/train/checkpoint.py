"""Checkpoints: everything needed to continue a run exactly, written atomically.

``last.pt`` (every epoch): model, optimizer, epoch, best accuracy, RNG states, the
config and the history so far. ``best.pt``: the weights of the best epoch so far (the
study's best-only file). Both are loaded with ``torch.load(weights_only=True)``, so a
checkpoint cannot run code.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from archbench.errors import ArchbenchError
from archbench.io_utils import atomic_torch_save, os_error

LAST, BEST = "last.pt", "best.pt"
FORMAT = 1  # bump when the checkpoint layout changes


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path: Path, payload: dict[str, Any]) -> None:
    atomic_torch_save(path, {"format": FORMAT, **payload})


def load(path: Path, map_location: str | torch.device = "cpu", mmap: bool = False) -> dict[str, Any]:
    """A checked checkpoint; ``mmap`` maps the tensors instead of reading them (for a quick look)."""
    path = Path(path)
    if not path.is_file():
        raise ArchbenchError(f"checkpoint {path} not found; train the run first (archbench train/compare)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except OSError as e:
        if e.filename is None and e.errno == errno.EINVAL:  # how torch meets some truncated files
            raise _unreadable(path, e) from e
        raise os_error("read", path, e, "check the file's permissions and the disk, then try again") from e
    except Exception as e:  # torch raises several types for truncated/garbled files
        raise _unreadable(path, e) from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ArchbenchError(f"checkpoint {path} is not an archbench checkpoint of format {FORMAT}")
    _check_layout(ckpt, path, LAYOUT[LAST] if path.name == LAST else LAYOUT[BEST])
    if path.name == LAST:
        _check_progress(ckpt, path)
    return ckpt


def _unreadable(path: Path, e: BaseException) -> ArchbenchError:
    detail = next(iter(str(e).splitlines()), "")[:200]
    return ArchbenchError(
        f"checkpoint {path} is unreadable ({type(e).__name__}{': ' + detail if detail else ''}; "
        f"{path.stat().st_size} bytes); it is truncated or damaged — {damaged_fix(path)}"
    )


def damaged_fix(path: Path) -> str:
    """What to do about a damaged checkpoint: last.pt can be started over, best.pt only with its run."""
    if Path(path).name == LAST:
        return "delete it to start the run again"
    return "delete the run folder (or best.pt and last.pt) to train the run again"


def _check_progress(ckpt: dict[str, Any], path: Path) -> None:
    """last.pt's counters agree with each other and with the history it carries."""
    from archbench.train import history

    def refuse(problem: str) -> ArchbenchError:
        return ArchbenchError(f"checkpoint {path}: {problem}; the file is damaged — {damaged_fix(path)}")

    history.check_records(ckpt["history"], f"checkpoint {path}: history", f"the file is damaged — {damaged_fix(path)}")
    epoch, planned = ckpt["epoch"], ckpt["config"].get("epochs")
    if epoch != len(ckpt["history"]):
        raise refuse(f"epoch {epoch} but {len(ckpt['history'])} history records")
    if isinstance(planned, int) and epoch > planned:
        raise refuse(f"epoch {epoch} of a run planned for {planned}")
    if not (ckpt["best_epoch"] <= epoch and (-1 <= ckpt["best_acc"] <= 100)):
        raise refuse(f"best epoch {ckpt['best_epoch']} with accuracy {ckpt['best_acc']} after epoch {epoch}")
    data = ckpt.get("data")
    if data is not None and not (
        isinstance(data, dict) and all(isinstance(data.get(k), str) for k in ("train", "test", "source"))
    ):
        raise refuse("field 'data' should be the fingerprint of the data it trained on")
    source = ckpt.get("model_source")
    if source is not None and not (
        isinstance(source, dict)
        and all(isinstance(k, str) and (v is None or isinstance(v, str)) for k, v in source.items())
    ):
        raise refuse("field 'model_source' should say where the model's definition came from")


def _is_tensor_dict(v: Any) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and isinstance(t, torch.Tensor) for k, t in v.items())


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# What each file must hold for a resume or an evaluation to use it, field by field.
_FIELD_CHECKS = {
    "model_name": ("a model name", lambda v: isinstance(v, str)),
    "model": ("a state_dict of tensors", _is_tensor_dict),
    "optimizer": ("an optimizer state_dict", lambda v: isinstance(v, dict) and {"state", "param_groups"} <= set(v)),
    "epoch": ("an epoch number", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0),
    "val_acc": ("an accuracy", _is_number),
    "best_acc": ("an accuracy", _is_number),
    "best_epoch": ("an epoch number", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0),
    "rng": ("RNG states", lambda v: isinstance(v, dict) and isinstance(v.get("torch"), torch.Tensor)),
    "config": ("a config mapping", lambda v: isinstance(v, dict)),
    "history": ("a list of epoch records", lambda v: isinstance(v, list) and all(isinstance(r, dict) for r in v)),
}
LAYOUT = {
    BEST: ("model_name", "model", "epoch", "val_acc", "config"),
    LAST: ("model_name", "model", "optimizer", "epoch", "best_acc", "best_epoch", "rng", "config", "history"),
}


def _check_layout(ckpt: dict[str, Any], path: Path, fields: tuple[str, ...]) -> None:
    for name in fields:
        what, ok = _FIELD_CHECKS[name]
        if name not in ckpt or not ok(ckpt[name]):
            found = "missing" if name not in ckpt else f"a {type(ckpt[name]).__name__}"
            raise ArchbenchError(
                f"checkpoint {path}: field {name!r} should be {what} but is {found}; the file is "
                f"damaged or not archbench's — {damaged_fix(path)}"
            )


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], path: Path, model_name: str) -> None:
    """Load a state_dict, turning key/shape mismatches into one clear error."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    shapes = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or extra or shapes:
        detail = (
            f"{len(missing)} missing, {len(extra)} unexpected, {len(shapes)} mis-shaped "
            f"tensors (first: {(missing + extra + shapes)[0]})"
        )
        raise ArchbenchError(
            f"checkpoint {path} does not fit model {model_name!r}: {detail}; it belongs to another model or config"
        )
    model.load_state_dict(state)
