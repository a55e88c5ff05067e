"""Damaged files: every reader refuses damage with one line naming the file and leaves the folder as it was.

One small real compare folder (two models, two seeds, one run diverged) is built once, and
a config file is written. Every case damages one file in a generated, seeded way
(truncation, random bytes, a wrong type in each field, wrong encodings, a missing or extra
field, an extra file, a folder in the file's place, a surprising JSON top level), runs the
command that reads it in-process, then restores the folder. A case passes if no exception
escapes ``main`` and either the command fails with exactly one line "archbench: error: ..."
naming the damaged file and every file and folder is byte-for-byte as before, or the damage
is one of the few harmless ones listed below with the reason it is harmless.

Each file is read by the cheapest command that reads all of it: report for the compare
folder's files and final.json, predictions.npz, divergence.json and config.json; plot (of
one run) for the history files and gradflow.csv; train for a --config file. A
representative few also go through plot and eval (``ALSO``). Failing cases are cheap (the
readers fail before anything is drawn), so each runs the CLI. A harmless case for report or
plot is checked on the reading layer instead (``evidence.load``, or what plot reads), since
drawing takes seconds; a few run the whole command as well (``CLI_TOO``). A harmless config
file is loaded, not trained on.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

from archbench.analysis import evidence
from archbench.analysis.plots import run_label
from archbench.cli import main
from archbench.config import (
    FIELD_NAMES,
    LATER_PROTOCOL_DEFAULTS,
    PROTOCOL_FIELDS,
    Config,
    from_mapping,
    load_file,
    resolve,
)
from archbench.train import gradflow, history
from conftest import REPO, SAMPLE_DIR

DRIVER = Path(__file__).with_name("fault_driver.py")
# The second training loss of the process (resnet18 seed 0, epoch 2) is NaN: that run diverges.
COMPARE = [
    "resnet18",
    "plain18",
    "--seeds",
    "0",
    "1",
    "--epochs",
    "2",
    "--milestones",
    "2",
    "--train-subset",
    "20",
    "--test-subset",
    "20",
    "--batch-size",
    "20",
    "--device",
    "cpu",
    "--quiet",
]
DIVERGED, FINISHED = "resnet18/seed0", "plain18/seed1"  # the run folders whose files are damaged
EVAL = ["--data-dir", str(SAMPLE_DIR), "--device", "cpu"]

# ---------------------------------------------------------------- what the files hold

# JSON types of each field, as the fixture's files hold them (checked by test_templates_match_the_files).
S, I, F, N, B = "string", "integer", "number", "null", "bool"


def _json_type(v) -> str | list | dict:
    if isinstance(v, dict):
        return {k: _json_type(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_type(x) for x in v]
    return (
        N if v is None else B if isinstance(v, bool) else I if isinstance(v, int) else F if isinstance(v, float) else S
    )


RUN_CONFIG = _json_type(
    resolve(
        Config(
            model="plain18",
            epochs=2,
            milestones=(2,),
            train_subset=20,
            test_subset=20,
            batch_size=20,
            data_dir="d",
            device="cpu",
        )
    ).to_dict()
)
EVALUATION = {"epoch": I, "loss": F, "acc": F, "acc_exact": N}
TEMPLATES = {
    f"{FINISHED}/config.json": RUN_CONFIG,
    f"{DIVERGED}/final.json": {
        "model": S,
        "seed": I,
        "params": I,
        "flops_per_image": F,
        "planned_epochs": I,
        "selected_on": S,
        "best_val": F,
        "best": EVALUATION,
        "last": EVALUATION,
        "images": I,
        "images_exact": N,
        "diverged": {"epoch": I, "step": I},
    },
    f"{DIVERGED}/divergence.json": {"epoch": I, "step": I, "message": S, "config": RUN_CONFIG},
    "comparison.json": {
        "format": I,
        "models": [S, S],
        "runs": [{"model": S, "seed": I, "dir": S}] * 4,
        "min_effect_pp": F,
        "environment": {
            "archbench": S,
            "git commit": S,
            "torch": S,
            "python": S,
            "device": S,
            "data": S,
            "data checksums": S,
            "test images": I,
            "wall time of compare (s)": F,
        },
    },
    f"{FINISHED}/history.jsonl": {
        k: N if k == "val_acc_exact" else I if k == "epoch" else F for k in history.FIELDS
    },  # its last line, epoch 2
    f"{FINISHED}/model.json": {
        "name": S,
        "description": S,
        "default_lr": F,
        "plain_twin_of": S,
        "source": {"kind": S, "spec": S, "file": N, "sha256": N, "package": N},
    },
}
CONFIG_FILE = {  # every setting a user writes; model_spec is archbench's record of a spec given as `model`
    "model": "resnet18",
    "dataset": "cifar10",
    "epochs": 1,
    "batch_size": 20,
    "lr": 0.05,
    "momentum": 0.9,
    "weight_decay": 0.0005,
    "milestones": [1],
    "gamma": 0.1,
    "seed": 3,
    "pipeline": "fast",
    "workers": 0,
    "precision": "fp32",
    "train_subset": 20,
    "test_subset": 20,
    "val_split": 10,
    "device": "cpu",
    "compile": False,
    "cuda_graphs": False,
    "tensorboard": False,
    "mlflow": "default",
    "wandb": False,
    "grad_norms_per_epoch": 1,
    "min_effect": 0.5,
    "data_dir": "nodata",
    "download": False,
    "offline": True,
    "verify_data": False,
    "out": "runs",
    "quiet": True,
}
HOW_SETTINGS = [k for k in FIELD_NAMES if k not in PROTOCOL_FIELDS]

# ---------------------------------------------------------------- harmless damage, and why

SAME = "the readers see exactly what they saw before"
EXTRA_FIELD = "an unknown field is ignored: it may come from a newer archbench; " + SAME
HARMLESS_NULLS = {  # (file, field): what null means there
    "config.json:data_dir": "no data folder was named; where the data came from does not change the run's numbers",
    "divergence.json:config.data_dir": "no data folder was named (as in config.json)",
    "comparison.json:environment.git commit": "archbench did not run from a git checkout; the row is left out",
    "model.json:plain_twin_of": "no declared twin: plain18 is still resnet18's twin by its name",
    "comparison.json:environment.data": "the data was not described; the row is left out",
    "comparison.json:environment.data checksums": "the checksums were not recorded; the row is left out",
    "comparison.json:environment.test images": "the count was not recorded; the row is left out",
    **{
        f"exp.yaml:{k}": "null leaves the setting unset, as its default does"
        for k in ("lr", "train_subset", "test_subset", "val_split", "data_dir", "mlflow", "cuda_graphs")
    },
}
MISSING_HOW = (
    "a 'where and how' setting does not change the numbers a run produces, and the readers do not "
    "use it; a missing one takes its default"
)
MISSING_SETTING = "every setting in a config file is optional: the default applies"


OTHER_HARMLESS = {
    "exp.toml:bom": "editors on Windows start UTF-8 files with a byte-order mark; " + SAME,
    "exp.yaml:bom": "editors on Windows start UTF-8 files with a byte-order mark; " + SAME,
    f"{FINISHED}/history.jsonl:deleted": "history.csv holds the same records; " + SAME,
    f"{FINISHED}/history.csv:deleted": "history.jsonl holds the same records; " + SAME,
    f"{FINISHED}/gradflow.csv:deleted": "a run may record no gradient norms (--grad-norms-per-epoch 0); the "
    "figures of them are left out",
    f"{FINISHED}/history.csv:extra-column": EXTRA_FIELD,
    f"{FINISHED}/predictions.npz:extra-array": EXTRA_FIELD,
    f"{FINISHED}/predictions.npz:missing-array exact": "'exact' is written only to mark test images that are not "
    "pixel-exact, and the analysis does not read it",
    ".:extra-file": "only the runs comparison.json lists are read; " + SAME,
    ".:extra-folder": "only the runs comparison.json lists are read; " + SAME,
    f"{FINISHED}:extra-file": "a run folder's files are read by name; " + SAME,
    f"{FINISHED}:extra-folder": "a run folder's files are read by name; " + SAME,
    f"{FINISHED}/config.json:string mlflow": "any text is an MLflow tracking URI, and where a run was tracked "
    "does not change its numbers",
    f"{DIVERGED}/divergence.json:string config.mlflow": "any text is an MLflow tracking URI (as in config.json)",
    f"{FINISHED}/config.json:bool cuda_graphs": "true asks for CUDA graphs, a 'where and how' setting the readers "
    "do not use",
    f"{DIVERGED}/divergence.json:bool config.cuda_graphs": "true asks for CUDA graphs (as in config.json)",
    f"{FINISHED}/model.json:deleted": "runs made before model.json have none; a built-in's plain twin then comes "
    "from the registry, which names the same one",
    **{
        f"{FINISHED}/model.json:string source.{k}": "the source record is compared when a model is built (a "
        "resume reads last.pt's copy); report and plot build none; " + SAME
        for k in ("file", "sha256", "package")
    },
}


def harmless(target: str, damage: str, command: str) -> str | None:
    """Why ``damage`` to ``target`` is harmless, or None if it must be refused."""
    name, (kind, _, field) = Path(target).name, damage.partition(" ")
    if (name, damage, command) == ("divergence.json", "deleted", "eval"):
        return (
            "without the record the run is an unfinished one, which eval evaluates as it is (deleting the "
            "record is how a diverged run is trained again); report refuses it, final.json saying otherwise"
        )
    settings = name in ("config.json", "exp.toml", "exp.yaml") or field.startswith("config.")
    if kind == "extra-field":  # settings refuse unknown names: one might be a protocol setting this version lacks
        return None if settings else EXTRA_FIELD
    if kind == "null":
        return HARMLESS_NULLS.get(f"{name}:{field}")
    if kind == "missing" and name in ("exp.toml", "exp.yaml"):
        return MISSING_SETTING
    if kind == "missing" and settings:
        setting = field.removeprefix("config.")
        if setting in LATER_PROTOCOL_DEFAULTS:
            default = LATER_PROTOCOL_DEFAULTS[setting]
            return f"runs recorded before {setting!r} was are read with {default!r}, as this run had"
        return MISSING_HOW if setting in HOW_SETTINGS else None
    return OTHER_HARMLESS.get(f"{target}:{damage}")


# Harmless cases that also run the whole command (the others are checked on the reading layer).
CLI_TOO = {".:extra-file", f"{FINISHED}/history.csv:extra-column"}

# ---------------------------------------------------------------- generated damage


@dataclass(frozen=True)
class Case:
    target: str  # the damaged file, relative to its folder ("." for the folder itself)
    damage: str  # "kind detail", e.g. "string best.acc", "cut 0"
    apply: Callable[[Path], None]  # damages the file at this path
    command: str  # report, plot, eval or train

    @property
    def id(self) -> str:
        return f"{self.target}:{self.damage}" + (
            "" if self.command == DEFAULT_COMMAND.get(self.target) else f" [{self.command}]"
        )


def _rng(*key) -> random.Random:
    return random.Random(":".join(map(str, key)))


def _edit_bytes(change: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(change(path.read_bytes()))


def _cut(at: float) -> Callable[[Path], None]:
    """Truncation: to ``at`` bytes, or to that fraction of the file, or by -``at`` bytes."""
    return _edit_bytes(lambda b: b[: int(len(b) * at)] if isinstance(at, float) else b[:at])


def _to_folder(path: Path) -> None:
    path.unlink()
    path.mkdir()
    (path / "inside").write_text("x")


def _latin1(marker: str) -> Callable[[Path], None]:
    """Text with an é after the first ``marker``, saved as latin-1 (not UTF-8)."""
    return _edit_bytes(lambda b: b.decode().replace(marker, marker + "é", 1).encode("latin-1"))


def file_damage(target: str, marker: str | None) -> Iterator[tuple[str, Callable[[Path], None]]]:
    """Damage any file can take: truncation, random bytes, a folder in its place, gone; and for a
    text file (``marker``: where to put a non-ASCII letter) wrong encodings."""
    yield "cut 0", _cut(0)
    yield "cut 1", _cut(1)
    yield "cut half", _cut(0.5)
    yield "cut -2", _cut(-2)
    yield "random-bytes", lambda p: p.write_bytes(_rng(target, "bytes").randbytes(600))
    yield "folder", _to_folder
    yield "deleted", Path.unlink
    if marker:
        yield "latin-1", _latin1(marker)
        yield "utf-16", _edit_bytes(lambda b: b.decode().encode("utf-16"))
        yield "bom", _edit_bytes(lambda b: b"\xef\xbb\xbf" + b)


# Values of other JSON types than a field's own; "huge" and "negative" only where a number could be.
SUBSTITUTES = {
    "string": "x",
    "null": None,
    "list": [1],
    "object": {"x": 1},
    "bool": True,
    "huge": 10**400,
    "negative": -1,
}


def _walk(template, path=()) -> Iterator[tuple[tuple, object]]:
    """(path, JSON type) of every field below the top level, containers included."""
    items = template.items() if isinstance(template, dict) else enumerate(template)
    for key, sub in items:
        yield path + (key,), sub
        if isinstance(sub, (dict, list)):
            yield from _walk(sub, path + (key,))


def _name(path: tuple) -> str:
    return "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in path).lstrip(".")


def _substitutes(kind) -> Iterator[tuple[str, object]]:
    own = (
        {S: "string", N: "null", B: "bool"}.get(kind)
        if isinstance(kind, str)
        else "list"
        if isinstance(kind, list)
        else "object"
    )
    for name, value in SUBSTITUTES.items():
        if name != own and (name not in ("huge", "negative") or kind in (I, F, N)):
            yield name, value


def _set(obj, path: tuple, value) -> None:
    for key in path[:-1]:
        obj = obj[key]
    obj[path[-1]] = value


def _delete(obj, path: tuple) -> None:
    for key in path[:-1]:
        obj = obj[key]
    del obj[path[-1]]


def field_damage(
    template: dict, edit: Callable[[Callable[[object], object]], Callable[[Path], None]]
) -> Iterator[tuple[str, Callable[[Path], None]]]:
    """A wrong type in each field, each field missing, an extra field, a surprising top level.

    ``edit(change)`` damages a file by applying ``change`` to its parsed contents.
    """

    def changed(fn):
        def change(obj):
            fn(obj)
            return obj

        return edit(change)

    for path, kind in _walk(template):
        for name, value in _substitutes(kind):
            yield f"{name} {_name(path)}", changed(lambda o, p=path, v=value: _set(o, p, v))
        if not isinstance(path[-1], int):
            yield f"missing {_name(path)}", changed(lambda o, p=path: _delete(o, p))
    nested = next((p for p, k in _walk(template) if isinstance(k, dict)), None)
    for where in ((), nested) if nested else ((),):
        yield f"extra-field {_name(where + ('zz_extra',))}", changed(lambda o, w=where: _set(o, w + ("zz_extra",), 1))
    for name, top in (("list", []), ("number", 3), ("null", None), ("string", "x")):
        yield f"top-level {name}", edit(lambda o, t=top: t)


def _json_file(change):
    return _edit_bytes(lambda b: (json.dumps(change(json.loads(b)), indent=2) + "\n").encode())


def _jsonl_last_line(change):
    def apply(b: bytes) -> bytes:
        lines = b.decode().rstrip("\n").split("\n")
        lines[-1] = json.dumps(change(json.loads(lines[-1])))
        return ("\n".join(lines) + "\n").encode()

    return _edit_bytes(apply)


def _csv_edit(change: Callable[[list[list[str]]], None]) -> Callable[[Path], None]:
    def apply(b: bytes) -> bytes:
        rows = [line.split(",") for line in b.decode().rstrip("\n").split("\n")]
        change(rows)
        return ("\n".join(",".join(r) for r in rows) + "\n").encode()

    return _edit_bytes(apply)


def _column(header: list[str], spec: str) -> int:
    """A column by name, or the first whose name starts with ``spec`` ending in ":", or the last ("-1")."""
    if spec == "-1":
        return len(header) - 1
    return next(i for i, h in enumerate(header) if h == spec or (spec.endswith(":") and h.startswith(spec)))


def _set_cell(spec: str, text: str):
    return _csv_edit(lambda rows: rows[-1].__setitem__(_column(rows[0], spec), text))


def _drop_column(spec: str):
    return _csv_edit(lambda rows: [r.pop(i) for i in [_column(rows[0], spec)] for r in rows])


def _add_column(rows: list[list[str]]) -> None:
    rows[0].append("zz_extra")
    for r in rows[1:]:
        r.append("1")


CELLS = {"string": "x", "null": "", "huge": "1e999", "huge-int": "1" + "0" * 400, "negative": "-1", "list": "[1]"}


def csv_damage(columns: dict[str, str], nullable: tuple[str, ...] = ()) -> Iterator[tuple[str, Callable]]:
    """A bad cell in each named column of the last row, a column missing or extra, a row too long or short."""
    for name, col in columns.items():
        for kind, text in CELLS.items():
            if not (kind == "null" and name in nullable):
                yield f"{kind} {name}", _set_cell(col, text)
        yield f"missing {name}", _drop_column(col)
    yield "extra-column", _csv_edit(_add_column)
    yield "row-long", _csv_edit(lambda rows: rows[-1].append("1"))
    yield "row-short", _csv_edit(lambda rows: rows[-1].pop())
    yield "cut last row", _edit_bytes(lambda b: b[: b.rstrip(b"\n").rfind(b"\n") + 1 + 40])


def _npz(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(path: Path) -> None:
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        change(arrays)
        path.unlink()
        with open(path, "wb") as f:
            np.savez_compressed(f, **arrays)

    return apply


PREDICTION_ARRAYS = [
    "index",
    "label",
    "exact",
    *(f"{w}_{k}" for w in ("best", "last") for k in ("pred", "loss", "logits")),
]


def npz_damage() -> Iterator[tuple[str, Callable]]:
    for name in PREDICTION_ARRAYS:
        yield f"missing-array {name}", _npz(lambda a, n=name: a.pop(n))
        wrong = np.float32 if name.endswith(("index", "label", "pred")) else np.int8 if name == "exact" else np.int64
        yield f"dtype {name}", _npz(lambda a, n=name, t=wrong: a.__setitem__(n, a[n].astype(t)))
        yield f"shape {name}", _npz(lambda a, n=name: a.__setitem__(n, a[n][..., None]))
        yield f"short {name}", _npz(lambda a, n=name: a.__setitem__(n, a[n][:-1]))
        if name.endswith(("label", "pred")):
            for kind, v in (("class-10", 10), ("class-negative", -1)):
                yield f"{kind} {name}", _npz(lambda a, n=name, v=v: a[n].__setitem__(0, v))
    yield "short every-array", _npz(lambda a: [a.__setitem__(k, v[:-1]) for k, v in list(a.items())])
    yield "extra-array", _npz(lambda a: a.__setitem__("zz_extra", np.zeros(3)))
    yield "one-npy-array", _one_array
    yield "json-text", lambda p: p.write_text("{}")


def _one_array(path: Path) -> None:
    with open(path, "wb") as f:  # np.save(path) would add ".npy" to the name
        np.save(f, np.zeros(3))


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(map(_toml_value, v)) + "]"
    return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"


def to_toml(d: dict) -> str:
    return "".join(f"{k} = {_toml_value(v)}\n" for k, v in d.items())


def _config_file(fmt: str):
    """``edit(change)`` for a config file: ``change`` applied to its settings, written back in ``fmt``."""
    dump, load = (
        (to_toml, tomllib.loads) if fmt == "toml" else (lambda d: yaml.safe_dump(d, sort_keys=False), yaml.safe_load)
    )
    return lambda change: _edit_bytes(lambda b: dump(change(load(b.decode()))).encode())


DEFAULT_COMMAND = {
    "comparison.json": "report",
    f"{FINISHED}/config.json": "report",
    f"{DIVERGED}/final.json": "report",
    f"{DIVERGED}/divergence.json": "report",
    f"{FINISHED}/predictions.npz": "report",
    f"{FINISHED}/model.json": "report",
    f"{FINISHED}/history.jsonl": "plot",
    f"{FINISHED}/history.csv": "plot",
    f"{FINISHED}/gradflow.csv": "plot",
    "exp.toml": "train",
    "exp.yaml": "train",
    ".": "report",
    FINISHED: "report",
}
# A few cases also run through the other commands that read the file.
ALSO = {
    f"{FINISHED}/config.json": {
        "plot": ("cut 0", "top-level list", "object model", "folder", "missing model"),
        "eval": ("cut half", "top-level number", "string lr", "folder", "latin-1", "missing epochs"),
    },
    f"{DIVERGED}/divergence.json": {
        "eval": (
            "cut half",
            "top-level list",
            "string step",
            "null epoch",
            "string config.epochs",
            "missing message",
            "folder",
            "latin-1",
            "deleted",
            "extra-field zz_extra",
        )
    },
}


def generate() -> list[Case]:
    per_file: dict[str, list[tuple[str, Callable]]] = {}
    for target, template in TEMPLATES.items():
        edit = _jsonl_last_line if target.endswith(".jsonl") else _json_file
        per_file[target] = [*file_damage(target, '"'), *field_damage(template, edit)]
    per_file[f"{FINISHED}/history.csv"] = [
        *file_damage("history.csv", "epoch"),
        *csv_damage({k: k for k in history.FIELDS}, nullable=("val_acc_exact",)),
    ]
    # Not "cut -2": gradflow.csv ends in a number, and a number cut short is another valid one (no
    # checksum guards the file; history.csv is checked against history.jsonl instead).
    per_file[f"{FINISHED}/gradflow.csv"] = [
        *[(d, f) for d, f in file_damage("gradflow.csv", "epoch") if d != "cut -2"],
        *csv_damage({"epoch": "epoch", "t": "t", "first-grad": "grad:", "first-weight": "weight:", "last": "-1"}),
        ("header-renamed", _csv_edit(lambda rows: rows[0].__setitem__(2, "grad:elsewhere"))),
        ("header-only", _edit_bytes(lambda b: b[: b.find(b"\n") + 1])),
        ("t-backwards", _csv_edit(lambda rows: rows[-1].__setitem__(1, "0.5"))),
    ]
    per_file[f"{FINISHED}/predictions.npz"] = [*file_damage("predictions.npz", None), *npz_damage()]
    for fmt in ("toml", "yaml"):
        damages = [
            *file_damage(f"exp.{fmt}", "nodata"),
            ("cut inside model", _cut(10)),
            *field_damage(CONFIG_FILE_TYPES, _config_file(fmt)),
        ]
        # Not "cut half": a cut can leave a shorter valid file (train_subset = 2), which no reader can
        # tell from one written that way, a config file having no checksum; cuts that break the syntax
        # or a value are tested. TOML has no null, and its top level is always a table.
        per_file[f"exp.{fmt}"] = [
            (d, f) for d, f in damages if d != "cut half" and (fmt == "yaml" or not d.startswith(("null", "top-level")))
        ]
    per_file["."] = [
        ("extra-file", lambda p: (p / "notes.txt").write_text("x")),
        ("extra-folder", lambda p: (p / "plain18" / "seed7").mkdir()),
    ]
    per_file[FINISHED] = [
        ("extra-file", lambda p: (p / "notes.txt").write_bytes(b"\xff")),
        ("extra-folder", lambda p: (p / "old").mkdir()),
    ]
    cases = []
    for target, damages in per_file.items():
        also = ALSO.get(target, {})
        for damage, apply in damages:
            cases.append(Case(target, damage, apply, DEFAULT_COMMAND[target]))
            cases += [Case(target, damage, apply, cmd) for cmd, picked in also.items() if damage in picked]
    return cases


CONFIG_FILE_TYPES = _json_type(CONFIG_FILE)
CASES = generate()

# ---------------------------------------------------------------- the folders


def tree(root: Path) -> dict[str, bytes | tuple | None]:
    """Every file's bytes (a checkpoint's size and mtime) and every folder (None), by relative path."""
    out: dict[str, bytes | tuple | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        for name in dirnames:
            out[str((d / name).relative_to(root))] = None
        for name in filenames:
            p = d / name
            st = p.stat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns) if name.endswith(".pt") else p.read_bytes()
    return out


def restore(root: Path, pristine: dict, now: dict | None = None) -> None:
    """Make ``root`` hold ``pristine`` again (``now``: its tree, if just taken)."""
    now = tree(root) if now is None else now
    for rel in sorted(set(now) - set(pristine), reverse=True):  # innermost first
        p = root / rel
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    for rel, data in sorted(pristine.items()):
        p = root / rel
        if data is None:
            p.mkdir(exist_ok=True)
        elif isinstance(data, bytes) and now.get(rel) != data:
            if p.is_dir():
                shutil.rmtree(p)
            p.write_bytes(data)


@dataclass
class Folders:
    built: Path  # the compare folder as compare left it (checkpoints included): eval reads it
    work: Path  # a copy without checkpoints: report and plot read it
    configs: Path  # exp.toml and exp.yaml
    pristine: dict[Path, dict]

    def root(self, case: Case) -> Path:
        return self.configs if case.command == "train" else self.built if case.command == "eval" else self.work


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> Iterator[Folders]:
    if not SAMPLE_DIR.is_dir():
        pytest.skip(f"CIFAR-10 sample not found at {SAMPLE_DIR} (../shared is absent)")
    base = tmp_path_factory.mktemp("damaged")
    built = base / "built"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    p = subprocess.run(
        [sys.executable, str(DRIVER), "nan:2", "compare", *COMPARE, "--data-dir", str(SAMPLE_DIR), "--out", str(built)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    work = base / "work"
    shutil.copytree(built, work, ignore=shutil.ignore_patterns("*.pt"))
    configs = base / "configs"
    configs.mkdir()
    (configs / "exp.toml").write_text(to_toml(CONFIG_FILE))
    (configs / "exp.yaml").write_text(yaml.safe_dump(CONFIG_FILE, sort_keys=False))
    yield Folders(built, work, configs, {r: tree(r) for r in (built, work, configs)})
    shutil.rmtree(base, ignore_errors=True)  # half a gigabyte of checkpoints


def read_like(command: str, root: Path):
    """What ``command`` reads, as the command's reading layer returns it."""
    if command == "report":
        return evidence.load(root)
    if command == "plot":
        d = root / FINISHED
        return history.read(d), gradflow.read(d), run_label(d)
    raise AssertionError(command)


def argv(case: Case, root: Path) -> list[str]:
    if case.command == "train":
        return [
            "train",
            "resnet18",
            "--config",
            str(root / case.target),
            "--out",
            str(root / "runs"),
            "--data-dir",
            str(root / "nodata"),
            "--device",
            "cpu",
            "--quiet",
        ]
    run = str(root / Path(case.target).parent)
    return {"report": ["report", str(root)], "plot": ["plot", str(root / FINISHED)], "eval": ["eval", run, *EVAL]}[
        case.command
    ]


# ---------------------------------------------------------------- the tests


def test_templates_match_the_files(folders):
    """The field lists the cases are generated from are the files' own."""
    for target, template in TEMPLATES.items():
        text = (folders.work / target).read_text()
        parsed = json.loads(text.rstrip("\n").split("\n")[-1]) if target.endswith(".jsonl") else json.loads(text)
        assert _json_type(parsed) == template, target
    assert set(CONFIG_FILE) | {"model_spec"} == set(FIELD_NAMES)
    assert from_mapping(load_file(folders.configs / "exp.toml")) == from_mapping(CONFIG_FILE)
    assert from_mapping(load_file(folders.configs / "exp.yaml")) == from_mapping(CONFIG_FILE)


def test_every_file_a_reader_reads_is_damaged(folders):
    """Every kind of file in the folder is either damaged by some case or an output no command reads."""
    outputs = {".png", ".pt", ".md", ".html"} | {"comparison.csv"}
    kinds = {Path(rel).name for rel, data in folders.pristine[folders.work].items() if data is not None}
    read = {k for k in kinds if Path(k).suffix not in outputs and k not in outputs}
    assert read == {Path(c.target).name for c in CASES if "." in Path(c.target).name} - {"exp.toml", "exp.yaml"}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_damage_is_refused_in_one_line_or_harmless(folders, case, capsys):
    root = folders.root(case)
    path = root / case.target
    reason = harmless(case.target, case.damage, case.command)
    after = None
    try:
        case.apply(path)
        before = tree(root)
        capsys.readouterr()
        if reason and case.command in ("report", "plot") and case.id not in CLI_TOO:
            got = read_like(case.command, root)  # harmless: check what the command would read
            if reason.endswith(SAME):
                restore(root, folders.pristine[root])
                assert pickle.dumps(got) == pickle.dumps(read_like(case.command, root)), reason
            return
        if reason and case.command == "train":
            got = from_mapping(load_file(path))
            if reason.endswith(SAME):
                assert got == from_mapping(CONFIG_FILE)
            return
        rc = main(argv(case, root))  # an exception escaping here is a bug: the test fails with its traceback
        err = capsys.readouterr().err
        if reason:
            assert rc == 0, f"harmless ({reason}), but:\n{err}"
            return
        assert rc != 0 and err.startswith("archbench: error: ") and err.count("\n") == 1 and err.endswith("\n"), err
        named = str(path) in err or (str(path.parent) in err and path.name in err)
        assert named, f"the message does not name {path}:\n{err}"
        after = tree(root)
        assert after == before, "a failed command changed the folder"
    finally:
        restore(root, folders.pristine[root], after)


def test_an_older_runs_non_finite_validation_loss_is_read(tmp_path):
    """Runs trained before a non-finite validation loss stopped them recorded that epoch."""
    record = {
        "epoch": 1,
        "lr": 0.1,
        "train_loss": 2.3,
        "train_acc": 10.0,
        "val_loss": float("nan"),
        "val_acc": 10.0,
        "val_acc_exact": None,
        "train_seconds": 1.0,
        "eval_seconds": 0.5,
        "epoch_seconds": 1.5,
    }
    history.append_record(tmp_path, record)
    history.append_record(tmp_path, {**record, "epoch": 2, "val_loss": float("inf")})
    got = history.read(tmp_path)
    assert np.isnan(got[0]["val_loss"]) and got[1]["val_loss"] == float("inf")


def test_plot_reads_every_run_before_drawing_and_keeps_a_compare_folders_figures(folders, capsys):
    root = folders.work
    runs = sorted(p.parent for p in root.rglob("history.jsonl"))
    pngs = {p: p.read_bytes() for p in root.rglob("*.png")}
    broken = runs[-1] / "history.jsonl"
    broken.write_text(broken.read_text() + "{not json\n")
    try:
        assert main(["plot", str(root)]) == 1
        err = capsys.readouterr().err
        assert str(broken) in err and err.count("\n") == 1, err
        assert {p: p.read_bytes() for p in root.rglob("*.png")} == pngs, "figures drawn before the damage was seen"
    finally:
        restore(root, folders.pristine[root])
    assert main(["plot", str(root)]) == 0  # the report's overlays redrawn in its own model order
    assert {p: p.read_bytes() for p in root.glob("overlay_*.png")} == {p: pngs[p] for p in root.glob("overlay_*.png")}
    restore(root, folders.pristine[root])
