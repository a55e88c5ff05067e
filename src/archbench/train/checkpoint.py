"""Checkpoints: everything needed to continue a run exactly, written atomically.

``last.pt`` (every epoch): model, optimizer, epoch, best accuracy, RNG states, the
config and the history so far. ``best.pt``: the weights of the best epoch so far (the
study's best-only file). Both are loaded with ``torch.load(weights_only=True)``, so a
checkpoint cannot run code.
"""

from __future__ import annotations

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


def load(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ArchbenchError(f"checkpoint {path} not found; train the run first (archbench train/compare)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except OSError as e:
        raise os_error("read", path, e, "check the file's permissions") from e
    except Exception as e:  # torch raises several types for truncated/garbled files
        detail = next(iter(str(e).splitlines()), "")[:200]
        raise ArchbenchError(
            f"checkpoint {path} is unreadable ({type(e).__name__}{': ' + detail if detail else ''}; "
            f"{path.stat().st_size} bytes); it is truncated or damaged — delete it to start the run again") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ArchbenchError(f"checkpoint {path} is not an archbench checkpoint of format {FORMAT}")
    _check_layout(ckpt, path, LAYOUT[LAST] if path.name == LAST else LAYOUT[BEST])
    return ckpt


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
LAYOUT = {BEST: ("model_name", "model", "epoch", "val_acc", "config"),
          LAST: ("model_name", "model", "optimizer", "epoch", "best_acc", "best_epoch", "rng", "config", "history")}


def _check_layout(ckpt: dict[str, Any], path: Path, fields: tuple[str, ...]) -> None:
    for name in fields:
        what, ok = _FIELD_CHECKS[name]
        if name not in ckpt or not ok(ckpt[name]):
            found = "missing" if name not in ckpt else f"a {type(ckpt[name]).__name__}"
            raise ArchbenchError(f"checkpoint {path}: field {name!r} should be {what} but is {found}; the file is "
                                 f"damaged or not archbench's — delete it to start the run again")


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], path: Path, model_name: str) -> None:
    """Load a state_dict, turning key/shape mismatches into one clear error."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    shapes = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or extra or shapes:
        detail = (f"{len(missing)} missing, {len(extra)} unexpected, {len(shapes)} mis-shaped "
                  f"tensors (first: {(missing + extra + shapes)[0]})")
        raise ArchbenchError(f"checkpoint {path} does not fit model {model_name!r}: {detail}; "
                             f"it belongs to another model or config")
    model.load_state_dict(state)
