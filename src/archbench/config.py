"""The run configuration: one frozen dataclass, its validation, and how it is layered.

Defaults live in the dataclass. A TOML/YAML file overrides them, CLI flags override
the file. ``resolve`` fills in what depends on the model (its default learning rate)
so the config written into a run folder is complete and self-describing.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from archbench import io_utils
from archbench.errors import ArchbenchError
from archbench.schema import INT_LIMIT, show

PIPELINES = ("fast", "reference")
PRECISIONS = ("auto", "fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda", "mps")
MLFLOW_DEFAULT_STORE = "default"  # mlflow setting (bare --mlflow): a file store at OUT/mlruns


@dataclass(frozen=True)
class Config:
    """Everything that defines one training run. Defaults are the study's protocol."""

    model: str = "resnet18"  # the name runs are filed and reported under
    # Where a model from outside the registry comes from (models.specs): package.module:factory,
    # /abs/path/file.py:factory or timm:<name>; None for a registered name.
    model_spec: str | None = None
    dataset: str = "cifar10"  # cifar10 | cifar100 (data.datasets)
    epochs: int = 100
    batch_size: int = 128
    lr: float | None = None  # None: the model's own default (0.1, or 0.01 for plain VGG19)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: tuple[int, ...] = (50, 75)  # epochs after which lr is multiplied by gamma
    gamma: float = 0.1
    seed: int = 0
    pipeline: str = "fast"
    workers: int = 2  # DataLoader worker processes of the reference pipeline
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 elsewhere
    train_subset: int | None = None
    test_subset: int | None = None
    val_split: int | None = None  # hold out this many training images to select the best epoch on
    # Where and how: these do not change the numbers a run produces.
    device: str = "auto"
    compile: bool = False  # torch.compile the training forward pass
    # Replay training steps from captured CUDA graphs. None (auto): on CUDA for the package's own
    # models, falling back to the eager step with a warning if the step cannot be captured; True:
    # required, for any model; False: never.
    cuda_graphs: bool | None = None
    tensorboard: bool = False  # also log per-epoch scalars to RUN_DIR/tensorboard
    mlflow: str | None = None  # also log to MLflow: a tracking URI, or "default" (a file store at OUT/mlruns)
    wandb: bool = False  # also log to Weights & Biases (WANDB_MODE=offline: files under RUN_DIR/wandb only)
    grad_norms_per_epoch: int = 4  # times per epoch the per-layer gradient norms are recorded (0: off)
    min_effect: float = 0.3  # smallest final-accuracy difference of interest to verdicts, percentage points
    data_dir: str | None = None
    download: bool = False  # with data_dir: download CIFAR-10 there when it is missing
    offline: bool = False  # never download (also ARCHBENCH_OFFLINE=1); else a missing CIFAR-10 is fetched
    verify_data: bool = True
    out: str = "runs"
    quiet: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["milestones"] = list(self.milestones)
        return d

    def replace(self, **changes: Any) -> Config:
        return validate(dataclasses.replace(self, **changes))


# Fields that decide the numbers a run produces: a run folder can only be resumed or
# reused by a config that agrees on all of them.
PROTOCOL_FIELDS = (
    "model",
    "dataset",
    "epochs",
    "batch_size",
    "lr",
    "momentum",
    "weight_decay",
    "milestones",
    "gamma",
    "seed",
    "pipeline",
    "workers",
    "train_subset",
    "test_subset",
    "val_split",
    "precision",
)

# Protocol fields added after runs were first recorded: what an older config.json meant by leaving them out.
LATER_PROTOCOL_DEFAULTS = {"dataset": "cifar10"}

FIELD_NAMES = tuple(f.name for f in dataclasses.fields(Config))
LIST_SETTINGS = tuple(f.name for f in dataclasses.fields(Config) if isinstance(f.default, tuple))


def _require(ok: bool, name: str, allowed: str, value: Any) -> None:
    if not ok:
        raise ArchbenchError(f"config: {name}={value!r} is invalid; allowed: {allowed}")


def validate(cfg: Config) -> Config:
    """Check every field; raise one clear error naming the first bad one."""
    from archbench.data.datasets import DATASETS
    from archbench.models.specs import FORMS, is_name, name_of

    _require(isinstance(cfg.model, str) and is_name(cfg.model), "model", FORMS, cfg.model)
    _require(
        cfg.model_spec is None or (isinstance(cfg.model_spec, str) and ":" in cfg.model_spec),
        "model_spec",
        "package.module:factory, /path/to/file.py:factory, timm:<name>, or unset",
        cfg.model_spec,
    )
    _require(
        cfg.model_spec is None or name_of(cfg.model_spec) == cfg.model,
        "model",
        f"the name its model_spec files it under ({cfg.model_spec and name_of(cfg.model_spec)!r})",
        cfg.model,
    )
    _require(cfg.dataset in DATASETS, "dataset", ", ".join(DATASETS), cfg.dataset)
    _require(_is_int(cfg.epochs) and cfg.epochs >= 1, "epochs", "an integer >= 1", cfg.epochs)
    _require(_is_int(cfg.batch_size) and cfg.batch_size >= 1, "batch_size", "an integer >= 1", cfg.batch_size)
    _require(cfg.lr is None or (_is_num(cfg.lr) and cfg.lr > 0), "lr", "a finite number > 0", cfg.lr)
    _require(_is_num(cfg.momentum) and 0 <= cfg.momentum < 1, "momentum", "a number in [0, 1)", cfg.momentum)
    _require(_is_num(cfg.weight_decay) and cfg.weight_decay >= 0, "weight_decay", "a number >= 0", cfg.weight_decay)
    ms = cfg.milestones
    _require(
        all(_is_int(m) and m >= 1 for m in ms) and all(a < b for a, b in zip(ms, ms[1:])),
        "milestones",
        "strictly increasing integers >= 1 (epochs)",
        list(ms),
    )
    _require(_is_num(cfg.gamma) and 0 < cfg.gamma <= 1, "gamma", "a number in (0, 1]", cfg.gamma)
    _require(_is_int(cfg.seed) and cfg.seed >= 0, "seed", "an integer in [0, 2**63)", cfg.seed)
    _require(cfg.pipeline in PIPELINES, "pipeline", ", ".join(PIPELINES), cfg.pipeline)
    _require(_is_int(cfg.workers) and cfg.workers >= 0, "workers", "an integer >= 0", cfg.workers)
    _require(
        _is_int(cfg.grad_norms_per_epoch) and cfg.grad_norms_per_epoch >= 0,
        "grad_norms_per_epoch",
        "an integer >= 0 (0 turns the recording off)",
        cfg.grad_norms_per_epoch,
    )
    for name in ("train_subset", "test_subset", "val_split"):
        v = getattr(cfg, name)
        _require(v is None or (_is_int(v) and v >= 1), name, "an integer >= 1 or unset", v)
    _require(
        _is_num(cfg.min_effect) and cfg.min_effect >= 0,
        "min_effect",
        "a number >= 0 (percentage points)",
        cfg.min_effect,
    )
    _require(cfg.device in DEVICES, "device", ", ".join(DEVICES), cfg.device)
    _require(cfg.precision in PRECISIONS, "precision", ", ".join(PRECISIONS), cfg.precision)
    _require(
        cfg.data_dir is None or (isinstance(cfg.data_dir, str) and cfg.data_dir != ""),
        "data_dir",
        "a folder or archive path, or unset",
        cfg.data_dir,
    )
    _require(isinstance(cfg.out, str) and cfg.out != "", "out", "a folder path", cfg.out)
    _require(
        cfg.mlflow is None or (isinstance(cfg.mlflow, str) and cfg.mlflow != ""),
        "mlflow",
        f"a tracking URI, {MLFLOW_DEFAULT_STORE!r} (a file store at OUT/mlruns), or unset",
        cfg.mlflow,
    )
    for name in ("download", "offline", "verify_data", "quiet", "compile", "tensorboard", "wandb"):
        _require(isinstance(getattr(cfg, name), bool), name, "true or false", getattr(cfg, name))
    _require(
        cfg.cuda_graphs is None or isinstance(cfg.cuda_graphs, bool),
        "cuda_graphs",
        "true, false, or unset (on CUDA where the step can be captured)",
        cfg.cuda_graphs,
    )
    return cfg


def _is_int(v: Any) -> bool:
    """An integer that torch and numpy hold (int64), not a bool."""
    return isinstance(v, int) and not isinstance(v, bool) and -(2**63) <= v < 2**63


def _is_num(v: Any) -> bool:
    """A finite number (an inf learning rate or weight decay is never meant), not a bool."""
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _coerce(name: str, value: Any) -> Any:
    """Bring a value read from a file or JSON into the field's Python type."""
    if name == "milestones":
        if not isinstance(value, (list, tuple)):
            raise ArchbenchError(f"config: milestones={value!r} is invalid; allowed: a list of epochs")
        return tuple(value)
    if name in ("lr", "momentum", "weight_decay", "gamma", "min_effect") and _is_int(value):
        return float(value)
    return value


def from_mapping(values: Mapping[str, Any], base: Config | None = None, source: str = "config") -> Config:
    """Override ``base`` (default: the defaults) with ``values``; unknown keys are errors."""
    base = base or Config()
    changes = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in FIELD_NAMES:
            raise ArchbenchError(f"{source}: unknown setting {key!r}; known settings: {', '.join(FIELD_NAMES)}")
        changes[name] = _coerce(name, value)
    if "model" in changes and "model_spec" not in changes and isinstance(changes["model"], str):
        # What a user wrote (a name or a spec), not a run's record of both: parse it.
        from archbench.models.specs import parse

        changes["model"], changes["model_spec"] = parse(changes["model"])
    return validate(dataclasses.replace(base, **changes))


def with_model(cfg: Config, text: str) -> Config:
    """``cfg`` for the model the user named: a registered name or a spec (``models.specs``)."""
    from archbench.models.specs import parse

    name, spec = parse(text)
    return cfg.replace(model=name, model_spec=spec)


def _plain(value: Any) -> bool:
    """A value ``validate`` can judge: text, true/false, null, or a number a float holds
    (not NaN, not infinite, not 10**400) that is no larger than int64 if it is an integer."""
    if value is None or isinstance(value, (str, bool)):
        return True
    if isinstance(value, int):
        return -INT_LIMIT < value < INT_LIMIT
    return isinstance(value, float) and math.isfinite(value)


def file_settings(values: Any, where: str, fix: str | None = None) -> Config:
    """Settings read from a file (``where`` names it) as a validated Config.

    Files can hold what flags cannot: tables, nested lists, dates, keys that are not text.
    Those are refused here, so ``from_mapping`` only ever compares plain values; its errors
    are then given the file's name and ``fix``.
    """
    end = f"; {fix}" if fix else ""
    if not isinstance(values, dict):
        raise ArchbenchError(f"{where} must hold a mapping of settings, not {show(values)}{end}")
    for key, value in values.items():
        if not isinstance(key, str):
            raise ArchbenchError(f"{where}: setting name {show(key)} is not text{end}")
        is_list = key.replace("-", "_") in LIST_SETTINGS
        listed = is_list and isinstance(value, list)
        bad = [v for v in (value if listed else [value]) if not _plain(v)]
        if bad:
            number = isinstance(bad[0], (int, float)) and not isinstance(bad[0], bool)
            what = (
                "a finite number within ±2**63"
                if number
                else "a list of numbers"
                if is_list
                else "a single value (text, a number, true or false)"
            )
            raise ArchbenchError(
                f"{where}: setting {key!r} {'holds' if listed else 'is'} {show(bad[0])}, expected {what}{end}"
            )
    try:
        return from_mapping(values, source=where)
    except ArchbenchError as e:
        problem = str(e).removeprefix(f"{where}: ").removeprefix("config: ")
        raise ArchbenchError(f"{where}: {problem}{end}") from e


def load_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML or YAML config file into a plain dict of settings, each checked
    (``file_settings``) so that an error names the file."""
    path = Path(path)
    if not path.exists():  # a folder in the way is read_text's error
        raise ArchbenchError(f"config file {path} not found; pass an existing .toml or .yaml file")
    if path.suffix not in (".toml", ".yaml", ".yml"):
        raise ArchbenchError(f"config file {path}: unknown format; use .toml, .yaml or .yml")
    # Editors on Windows start UTF-8 files with a byte-order mark; it is not part of the settings.
    text = io_utils.read_text(path, "the config file", "pass a UTF-8 .toml or .yaml file").removeprefix("\ufeff")
    try:
        if path.suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python < 3.11
                import tomli as tomllib
            data = tomllib.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as e:  # parser errors carry line numbers; keep them in one line
        raise ArchbenchError(f"config file {path} could not be parsed: {' '.join(str(e).split())}") from e
    if data is None or data == {}:  # an empty (or truncated) file must not mean "the defaults"
        raise ArchbenchError(f"config file {path} holds no settings; add some, or leave out --config")
    if isinstance(data, dict) and isinstance(data.get("model"), str):
        # A model file named in a config file is found beside the config file, wherever archbench runs.
        from archbench.models.specs import anchored

        data["model"] = anchored(data["model"], path.absolute().parent)
    file_settings(data, f"config file {path}")
    return data


def resolve(cfg: Config, device_type: str = "cpu") -> Config:
    """Fill in model- and device-dependent defaults so the config fully describes the run."""
    from archbench.models.specs import resolve as resolve_model

    if cfg.lr is None:
        cfg = dataclasses.replace(cfg, lr=resolve_model(cfg.model, cfg.model_spec).default_lr)
    if cfg.precision == "auto":
        cfg = dataclasses.replace(cfg, precision="bf16" if device_type == "cuda" else "fp32")
    return validate(cfg)


def protocol(cfg: Config) -> dict[str, Any]:
    d = cfg.to_dict()
    return {k: d[k] for k in PROTOCOL_FIELDS}


def protocol_mismatch(saved: Mapping[str, Any], cfg: Config, extending: bool = False) -> list[str]:
    """Names and values of protocol fields where a saved config and ``cfg`` differ.

    With ``extending``, more epochs than saved is no difference: the epochs already finished
    are the first ones of the longer run (the schedule and data order depend on the epoch
    alone), so continuing them equals training the longer run from the start.
    """
    now = protocol(cfg)
    diffs = []
    for k in PROTOCOL_FIELDS:
        old = saved.get(k, LATER_PROTOCOL_DEFAULTS.get(k))
        if k == "milestones" and old is not None:
            old = list(old)
        if k == "epochs" and extending and isinstance(old, int) and old <= now[k]:
            continue
        if old != now[k]:
            diffs.append(f"{k}: {old!r} in the run folder vs {now[k]!r} now")
    return diffs


def write_json(cfg: Config, path: Path) -> None:
    from archbench.io_utils import atomic_write_text

    atomic_write_text(path, json.dumps(cfg.to_dict(), indent=2) + "\n")


RUN_CONFIG_FIX = "restore it from a copy, or train the run again"


def run_config(values: Any, where: str, fix: str = RUN_CONFIG_FIX) -> Config:
    """The config a run recorded (its config.json, or its divergence record's copy).

    It must state every protocol field, since those decide the run's numbers; a missing
    "where and how" setting takes its default. It must be resolved (``resolve``): a learning
    rate and a precision, not "auto".
    """
    if isinstance(values, dict):
        missing = [k for k in PROTOCOL_FIELDS if k not in values and k not in LATER_PROTOCOL_DEFAULTS]
        if missing:
            raise ArchbenchError(f"{where}: setting {missing[0]!r} is missing; {fix}")
    cfg = file_settings(values, where, fix)
    if cfg.lr is None:
        raise ArchbenchError(f"{where}: setting 'lr' is null, expected the learning rate the run used; {fix}")
    if cfg.precision == "auto":
        raise ArchbenchError(
            f"{where}: setting 'precision' is 'auto', expected the one the run used (fp32 or bf16); {fix}"
        )
    return cfg


def read_json(path: Path) -> Config:
    """A run folder's config.json (``run_config``)."""
    path = Path(path)
    return run_config(io_utils.read_json(path, "the run's config", RUN_CONFIG_FIX), str(path))
