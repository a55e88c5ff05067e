"""Models from outside the package: what a model spec names, and the check that it builds a classifier.

Everywhere a model is named (``train``, ``compare``, ``bench``, ``models``, config files) it can be:
- a registered name (``archbench models``): the built-ins, and the models an installed package
  declares in the entry-point group ``archbench.models`` (entry point name = model name);
- ``package.module:factory``, a function in an importable module;
- ``path/to/file.py:factory``, a function in a user's file;
- ``timm:<name>``, any timm model (``pip install 'archbench[timm]'``).

A factory is called as ``factory(num_classes=N)`` and returns a fresh ``nn.Module`` mapping
(B, 3, 32, 32) images to (B, N) logits. Its metadata are attributes (``registry.describe`` sets
them): ``description`` (else its docstring's first line), ``default_lr``, ``plain_twin_of``.

A spec becomes two config fields: ``model``, the short name runs are filed and reported under
(the factory's name; ``timm-<name>`` for timm), and ``model_spec``, the text that resolves it again
(None for registered names). File specs are made absolute so that a run resumes from anywhere.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import re
import sys
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path

import torch
import torch.nn as nn

from archbench.errors import ArchbenchError
from archbench.models.registry import DEFAULT_LR, MODELS, ModelSpec, Source

ENTRY_POINT_GROUP = "archbench.models"
TIMM_PREFIX = "timm:"
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]*")  # a model name is also a folder name
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
SPEC_FORMS = "package.module:factory, path/to/file.py:factory or timm:<name>"
FORMS = f"a name from 'archbench models', {SPEC_FORMS}"
CHECK_IMAGES = 2  # images in the test batch a factory's model must classify
SEEDS = (0, 1)  # the check builds the model under the first twice (the same weights) and the second once
MESSAGE_CHARS = 200  # an exception's text quoted in an error line is cut to this length
LISTED_NAMES = 10  # names a module offers, listed when the one asked for is missing


def parse(text: str) -> tuple[str, str | None]:
    """(model name, spec) for what the user wrote; the spec is None for a registered name.

    Only the form is checked here (and that a registered name exists); importing and building
    happen in ``resolve`` and ``check``.
    """
    if not isinstance(text, str) or not text.strip():
        raise ArchbenchError(f"model {text!r} is not a model; give {FORMS}")
    text = text.strip()
    if text.startswith(TIMM_PREFIX):
        name = text[len(TIMM_PREFIX) :]
        if not _NAME.fullmatch(name):
            raise ArchbenchError(
                f"model {text!r}: {name!r} is not a timm model name; list them with timm.list_models()"
            )
        return f"timm-{name}", text
    if ":" not in text:
        return _registered_name(text), None
    where, factory = text.rsplit(":", 1)
    if not _IDENTIFIER.fullmatch(factory):
        raise ArchbenchError(f"model {text!r}: {factory!r} after ':' is not a Python function name; give {FORMS}")
    if _is_file(where):
        path = _normal(Path(where).expanduser())
        if path.is_dir():
            raise ArchbenchError(f"model {text!r}: {path} is a folder; name a .py file in it (FILE.py:factory)")
        if not path.is_file():
            raise ArchbenchError(f"model {text!r}: file {path} not found; check the path")
        spec = f"{path}:{factory}"
    elif all(_IDENTIFIER.fullmatch(part) for part in where.split(".")):
        spec = text
    else:
        raise ArchbenchError(f"model {text!r}: {where!r} is neither a .py file nor a module path; give {FORMS}")
    if factory in MODELS or factory in entry_points():
        raise ArchbenchError(
            f"model {text!r} would be filed as {factory!r}, the name of a registered model; rename the factory "
            f"(for a library's function, wrap it in a file: def my_{factory}(num_classes=10): return "
            f"{factory}(num_classes=num_classes))"
        )
    return factory, spec


def _registered_name(text: str) -> str:
    if text in MODELS:
        return text
    if text in entry_points():
        if not is_name(text):
            raise ArchbenchError(
                f"entry point {text!r} ({_package_of(entry_points()[text]) or 'an installed package'}) is not a "
                f"usable model name (letters, digits, '_', '.', '+', '-'); ask its authors to rename it"
            )
        return text
    hint = f"; to use a function in that file, write {text}:factory" if text.endswith(".py") else ""
    raise ArchbenchError(f"unknown model {text!r}; available: {', '.join(available())} (or give {SPEC_FORMS}){hint}")


def _normal(path: Path) -> Path:
    """An absolute path without '.' or '..' parts (links kept), so one file has one spelling."""
    return Path(os.path.normpath(path.absolute()))


def anchored(text: str, folder: Path) -> str:
    """``text`` with a relative ``file.py:factory`` path taken from ``folder`` (a config file's)."""
    if not isinstance(text, str) or ":" not in text or text.startswith(TIMM_PREFIX):
        return text
    where, factory = text.rsplit(":", 1)
    if not _is_file(where) or Path(where).expanduser().is_absolute():
        return text
    return f"{_normal(folder / where)}:{factory}"


def name_of(spec: str) -> str:
    """The name a spec's runs are filed under: its factory's, or ``timm-<name>``."""
    if spec.startswith(TIMM_PREFIX):
        return f"timm-{spec[len(TIMM_PREFIX) :]}"
    return spec.rsplit(":", 1)[-1]


def looks_like_model(text: str) -> bool:
    """Whether ``text`` names a model rather than anything else (an MLflow URI, say): a registered
    name, a timm spec or a ``.py:factory`` spec."""
    return text in MODELS or text in entry_points() or text.startswith(TIMM_PREFIX) or ".py:" in text


def is_name(text: str) -> bool:
    """Whether ``text`` can name a model (and its run folder)."""
    return bool(_NAME.fullmatch(text))


def _is_file(where: str) -> bool:
    return where.endswith(".py") or "/" in where or "\\" in where


def available() -> list[str]:
    return list(MODELS) + [n for n in entry_points() if n not in MODELS]


def entry_points() -> dict[str, metadata.EntryPoint]:
    """Models installed packages declare in the ``archbench.models`` group, by name."""
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def resolve(name: str, spec: str | None = None) -> ModelSpec:
    """The ModelSpec of a parsed model: its factory (imported), metadata and source."""
    if spec is None:
        if name in MODELS:
            return MODELS[name]
        return _from_entry_point(entry_points()[_registered_name(name)])
    if spec.startswith(TIMM_PREFIX):
        return _from_timm(name, spec[len(TIMM_PREFIX) :])
    where, factory_name = spec.rsplit(":", 1)
    if _is_file(where):
        module, source = _load_file(spec, Path(where))
        factory = _attribute(spec, module, factory_name, str(where))
    else:
        module = _import(spec, where)
        factory = _attribute(spec, module, factory_name, where)
        # The file that defines the factory, which a package's __init__ may only import.
        defining = sys.modules.get(getattr(factory, "__module__", None) or "", module)
        source = Source("module", spec, *_defining_file(defining))
    return _spec_of(name, factory, source)


def _import(spec: str, module_name: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):
            raise ArchbenchError(
                f"model {spec!r}: no module named {e.name!r}; install it or add its folder to PYTHONPATH"
            ) from e
        raise _raised(spec, f"importing {module_name}", e) from e
    except Exception as e:
        raise _raised(spec, f"importing {module_name}", e) from e


def _load_file(spec: str, path: Path):
    try:
        code = path.read_bytes()
    except OSError as e:
        raise ArchbenchError(
            f"model {spec!r}: cannot read {path} ({e.strerror}); check the path (a run records its model file's "
            f"path: if the file moved, name its new path to compare or train --resume, which re-point the run)"
        ) from e
    digest = hashlib.sha256(code).hexdigest()
    # A name of its own per file and content: two files called model.py never meet in sys.modules,
    # and dataclasses or pickling inside the file find their module.
    stem = re.sub(r"\W", "_", path.stem)
    module_name = f"archbench_user_{stem}_{digest[:12]}"
    if module_name in sys.modules:
        return sys.modules[module_name], Source("file", spec, str(path), digest)
    loader_spec = importlib.util.spec_from_file_location(module_name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise ArchbenchError(f"model {spec!r}: {path} cannot be imported as Python; give a .py file")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[module_name] = module
    # As `python file.py` would, the file's folder is searched for what it imports (a blocks.py beside
    # it); appended, so that it never hides an installed package, and kept, for imports at call time.
    if str(path.parent) not in sys.path:
        sys.path.append(str(path.parent))
    try:
        loader_spec.loader.exec_module(module)
    except BaseException as e:
        del sys.modules[module_name]
        if not isinstance(e, Exception):
            raise
        raise _raised(spec, f"running {path}", e) from e
    return module, Source("file", spec, str(path), digest)


def _defining_file(module) -> tuple[str | None, str | None]:
    """The module's source file and its SHA-256, when it has one."""
    try:
        path = inspect.getsourcefile(module)
    except TypeError:  # a built-in or namespace module
        return None, None
    if not path:
        return None, None
    try:
        return path, hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return path, None


def _attribute(spec: str, module, name: str, where: str) -> Callable[..., nn.Module]:
    """The factory ``name`` of ``module`` (``where``: the file or module, as the user named it)."""
    factory = getattr(module, name, None)
    if factory is None:
        public = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
        raise ArchbenchError(
            f"model {spec!r}: {where} has no {name!r} "
            f"(it has: {', '.join(public[:LISTED_NAMES]) or 'nothing callable'}); check the name after ':'"
        )
    if not callable(factory):
        raise ArchbenchError(
            f"model {spec!r}: {name!r} is of type {type(factory).__name__}, not a function; name a factory"
        )
    return factory


def _own_doc(factory: Callable) -> str:
    """The factory's own docstring: a class without one would otherwise show nn.Module's."""
    doc = factory.__dict__.get("__doc__") if isinstance(factory, type) else getattr(factory, "__doc__", None)
    return inspect.cleandoc(doc) if isinstance(doc, str) else ""


def _spec_of(name: str, factory: Callable[..., nn.Module], source: Source) -> ModelSpec:
    doc = _own_doc(factory).splitlines()
    description = getattr(factory, "description", None) or (doc[0] if doc else f"{source.kind} model {source.spec}")
    lr = getattr(factory, "default_lr", DEFAULT_LR)
    twin = getattr(factory, "plain_twin_of", None)
    if not (isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr > 0):
        raise ArchbenchError(f"model {source.spec!r}: default_lr={lr!r} is not a learning rate > 0; fix the factory")
    if twin is not None and not (isinstance(twin, str) and _NAME.fullmatch(twin)):
        raise ArchbenchError(f"model {source.spec!r}: plain_twin_of={twin!r} is not a model name; fix the factory")
    return ModelSpec(name, factory, str(description), float(lr), twin, source)


def _package_of(ep: metadata.EntryPoint) -> str | None:
    return f"{ep.dist.name} {ep.dist.version}" if ep.dist is not None else None


def _from_entry_point(ep: metadata.EntryPoint) -> ModelSpec:
    package = _package_of(ep)
    what = f"entry point {ep.name!r} ({ep.value}{', from ' + package if package else ''})"
    try:
        factory = ep.load()
    except Exception as e:
        text = " ".join(str(e).split())[:MESSAGE_CHARS]
        raise ArchbenchError(
            f"model {ep.name!r}: loading {what} raised {type(e).__name__}: {text}; reinstall or update "
            f"{package or 'the package that declares it'}"
        ) from e
    if not callable(factory):
        raise ArchbenchError(f"model {ep.name!r}: {what} is a {type(factory).__name__}, not a function")
    module = sys.modules.get(getattr(factory, "__module__", "") or "")
    file, digest = _defining_file(module) if module is not None else (None, None)
    return _spec_of(ep.name, factory, Source("entry-point", ep.name, file, digest, package))


def _from_timm(name: str, timm_name: str) -> ModelSpec:
    try:
        import timm
    except ImportError as e:
        raise ArchbenchError(
            f"model 'timm:{timm_name}' needs timm, which is not installed; pip install 'archbench[timm]'"
        ) from e
    if not timm.is_model(timm_name):
        close = timm.list_models(f"*{timm_name.split('.')[0][:8]}*")[:5]
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise ArchbenchError(f"model 'timm:{timm_name}': timm {timm.__version__} has no such model{hint}")

    def build(num_classes: int = 10) -> nn.Module:
        # Untrained and offline: archbench compares architectures under its own protocol.
        return timm.create_model(timm_name, pretrained=False, num_classes=num_classes)

    source = Source("timm", f"{TIMM_PREFIX}{timm_name}", package=f"timm {timm.__version__}")
    return ModelSpec(name, build, f"timm's {timm_name} as built for ImageNet, untrained", DEFAULT_LR, None, source)


def _raised(spec: str, doing: str, e: BaseException, fix: str = "fix the model's code") -> ArchbenchError:
    text = " ".join(str(e).split())[:MESSAGE_CHARS]
    return ArchbenchError(f"model {spec!r}: {doing} raised {type(e).__name__}: {text}; {fix}")


def check(model_spec: ModelSpec, num_classes: int) -> list[str]:
    """Build the model on the CPU and run a test batch through it, in training (with a backward
    pass) and evaluation mode, before any folder is made or any training starts; the notes a user
    should read are returned. Refused, each in one line: a factory that raises, that returns
    something else than a fresh nn.Module (the same object twice, or weights that differ under one
    torch seed), that changes torch's default dtype, or whose logits are not (B, num_classes).
    Torch's RNG is left as it was."""
    what = model_spec.source.spec or model_spec.name
    fix = "choose another timm model" if model_spec.source.kind == "timm" else "fix the model's code"
    with torch.random.fork_rng(devices=[]):
        built = {}
        for key, seed in (("first", SEEDS[0]), ("again", SEEDS[0]), ("other", SEEDS[1])):
            torch.manual_seed(seed)
            built[key] = _as_module(what, _build(what, model_spec, num_classes, fix))
        model = built["first"]
        _refuse_lazy(what, model)
        _check_logits(what, _train_step(what, model, num_classes, fix), num_classes, "in training mode")
        _check_logits(what, _classify(what, model, fix), num_classes, "in evaluation mode")
        return _check_fresh(what, built["first"], built["again"], built["other"])


def _build(what: str, model_spec: ModelSpec, num_classes: int, fix: str) -> object:
    """The factory's result; a change it makes to torch's default dtype is undone, then refused."""
    dtype = torch.get_default_dtype()
    try:
        built = model_spec.build(num_classes=num_classes)
    except Exception as e:
        torch.set_default_dtype(dtype)
        raise _raised(what, f"its factory, called as factory(num_classes={num_classes}),", e, fix) from e
    changed = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    if changed != dtype:
        raise ArchbenchError(
            f"model {what!r}: its factory changed torch's default dtype to {changed}; build the model "
            f"without changing global settings (archbench sets the precision: --precision)"
        )
    return built


def _check_logits(what: str, out: object, num_classes: int, mode: str) -> None:
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else None
    if shape != (CHECK_IMAGES, num_classes):
        got = f"shape {shape}" if shape is not None else f"a {type(out).__name__}"
        raise ArchbenchError(
            f"model {what!r}: a test batch of {CHECK_IMAGES} images gave {got} {mode}, expected "
            f"({CHECK_IMAGES}, {num_classes}) logits; the network must return num_classes logits per image "
            f"(auxiliary outputs off)"
        )


def _train_step(what: str, model: nn.Module, num_classes: int, fix: str) -> object:
    """The model's output in training mode, after a backward pass through it when it is logits."""
    try:
        model = model.to("cpu").train()
        out = model(torch.zeros(CHECK_IMAGES, 3, 32, 32))
        if isinstance(out, torch.Tensor) and out.shape == (CHECK_IMAGES, num_classes):
            torch.nn.functional.cross_entropy(out.float(), torch.zeros(CHECK_IMAGES, dtype=torch.long)).backward()
        return out
    except Exception as e:
        raise _raised(what, f"a training step on a test batch of ({CHECK_IMAGES}, 3, 32, 32) images", e, fix) from e


def _as_module(what: str, built: object) -> nn.Module:
    if not isinstance(built, nn.Module):
        raise ArchbenchError(
            f"model {what!r}: its factory returned a {type(built).__name__}, not a torch.nn.Module; "
            f"return the network itself"
        )
    return built


def _refuse_lazy(what: str, model: nn.Module) -> None:
    """The optimizer is built before the first batch, so every parameter must have its shape by then."""
    if any(isinstance(p, nn.parameter.UninitializedParameter) for p in model.parameters()):
        raise ArchbenchError(
            f"model {what!r}: it has lazy layers (nn.LazyLinear, nn.LazyConv2d, ...) whose weights take their "
            f"shape at the first batch; give their input sizes, as the optimizer needs every weight before training"
        )


def _check_fresh(what: str, first: nn.Module, again: nn.Module, other: nn.Module) -> list[str]:
    """Three builds: two under one torch seed must be distinct networks with equal weights (the
    seed reproduces the run); the notes say when a third, under another seed, has the same weights."""
    p1, p2, p3 = (list(m.parameters()) for m in (first, again, other))
    if not p1:
        raise ArchbenchError(f"model {what!r}: the network has no parameters to train; return the whole network")
    if first is again or any(x is y for x, y in zip(p1, p2)):
        raise ArchbenchError(
            f"model {what!r}: its factory returned the same network (or parameters) twice; build a fresh one on "
            f"each call, or every seed and model would share weights"
        )
    if not _same_weights(p1, p2):
        raise ArchbenchError(
            f"model {what!r}: two builds under the same torch seed have different initial weights, so --seed "
            f"cannot reproduce a run; draw them from torch's random generator (not numpy's or Python's)"
        )
    if _same_weights(p1, p3):
        return [
            f"note: {what}'s initial weights do not depend on --seed (a deterministic init, or a factory that "
            f"sets a seed or loads weights); seeds then vary only the data order and augmentation"
        ]
    return []


def _same_weights(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(
        x.shape == y.shape and torch.equal(x.detach().cpu(), y.detach().cpu()) for x, y in zip(a, b)
    )


def _classify(what: str, model: nn.Module, fix: str) -> object:
    """The model's output for a batch of zeros, on the CPU where training moves it to its device anyway."""
    try:
        model = model.to("cpu").eval()
        with torch.no_grad():
            return model(torch.zeros(CHECK_IMAGES, 3, 32, 32))
    except Exception as e:
        raise _raised(what, f"classifying a test batch of ({CHECK_IMAGES}, 3, 32, 32) images", e, fix) from e


def source_mismatch(recorded: dict | None, now: Source) -> str | None:
    """Why the model recorded in a run folder is not the model ``now`` resolves to (None: same)."""
    if not recorded:
        return None  # runs made before sources were recorded
    if recorded.get("package") and now.package and recorded["package"] != now.package:
        return f"it came from {recorded['package']} and now from {now.package}"
    then_sha, now_sha = recorded.get("sha256"), now.sha256
    if not then_sha:
        return None  # a built-in, or timm (its version is the package above)
    if not now_sha:
        return f"{now.file or 'the file defining it'} cannot be read to compare it with the one the run used"
    if then_sha == now_sha:
        return None
    then_file = recorded.get("file")
    if then_file and now.file and then_file != now.file:
        return (
            f"the run used {then_file} (SHA-256 {then_sha[:12]}…), this is {now.file} "
            f"(SHA-256 {now_sha[:12]}…), another file with other contents"
        )
    return f"{now.file or 'its file'} has changed (SHA-256 {then_sha[:12]}… when the run began, {now_sha[:12]}… now)"
