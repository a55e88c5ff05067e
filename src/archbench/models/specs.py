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
import re
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import torch
import torch.nn as nn

from archbench.errors import ArchbenchError
from archbench.models.registry import MODELS, ModelSpec, Source

ENTRY_POINT_GROUP = "archbench.models"
TIMM_PREFIX = "timm:"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")  # a model name is also a folder name
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
SPEC_FORMS = "package.module:factory, path/to/file.py:factory or timm:<name>"
FORMS = f"a name from 'archbench models', {SPEC_FORMS}"
CHECK_IMAGES = 2  # images in the test batch a factory's model must classify


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
        if text in MODELS or text in entry_points():
            return text, None
        raise ArchbenchError(f"unknown model {text!r}; available: {', '.join(available())} (or give {SPEC_FORMS})")
    where, factory = text.rsplit(":", 1)
    if not _IDENTIFIER.fullmatch(factory):
        raise ArchbenchError(f"model {text!r}: {factory!r} after ':' is not a Python function name; give {FORMS}")
    if _is_file(where):
        path = Path(where).expanduser().absolute()
        if not path.is_file():
            raise ArchbenchError(f"model {text!r}: file {path} not found; check the path")
        spec = f"{path}:{factory}"
    elif all(_IDENTIFIER.fullmatch(part) for part in where.split(".")):
        spec = text
    else:
        raise ArchbenchError(f"model {text!r}: {where!r} is neither a .py file nor a module path; give {FORMS}")
    if factory in MODELS or factory in entry_points():
        raise ArchbenchError(
            f"model {text!r} would be filed as {factory!r}, the name of a registered model; rename the factory"
        )
    return factory, spec


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
        eps = entry_points()
        if name not in eps:
            raise ArchbenchError(f"unknown model {name!r}; available: {', '.join(available())} (or give {SPEC_FORMS})")
        return _from_entry_point(eps[name])
    if spec.startswith(TIMM_PREFIX):
        return _from_timm(name, spec[len(TIMM_PREFIX) :])
    where, factory_name = spec.rsplit(":", 1)
    if _is_file(where):
        module, source = _load_file(spec, Path(where))
    else:
        module = _import(spec, where)
        source = Source("module", spec, *_defining_file(module))
    factory = _attribute(spec, module, factory_name)
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
        raise ArchbenchError(f"model {spec!r}: cannot read {path} ({e.strerror}); check the path") from e
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


def _attribute(spec: str, module, name: str) -> Callable[..., nn.Module]:
    factory = getattr(module, name, None)
    if factory is None:
        public = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
        raise ArchbenchError(
            f"model {spec!r}: {getattr(module, '__name__', module)} has no {name!r} "
            f"(it has: {', '.join(public[:10]) or 'nothing callable'}); check the name after ':'"
        )
    if not callable(factory):
        raise ArchbenchError(f"model {spec!r}: {name!r} is a {type(factory).__name__}, not a function; name a factory")
    return factory


def _spec_of(name: str, factory: Callable[..., nn.Module], source: Source) -> ModelSpec:
    doc = (inspect.getdoc(factory) or "").strip().splitlines()
    description = getattr(factory, "description", None) or (doc[0] if doc else f"{source.kind} model {source.spec}")
    lr = getattr(factory, "default_lr", 0.1)
    twin = getattr(factory, "plain_twin_of", None)
    if not (isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr > 0):
        raise ArchbenchError(f"model {source.spec!r}: default_lr={lr!r} is not a learning rate > 0; fix the factory")
    if twin is not None and not (isinstance(twin, str) and _NAME.fullmatch(twin)):
        raise ArchbenchError(f"model {source.spec!r}: plain_twin_of={twin!r} is not a model name; fix the factory")
    return ModelSpec(name, factory, str(description), float(lr), twin, source)


def _from_entry_point(ep: metadata.EntryPoint) -> ModelSpec:
    package = f"{ep.dist.name} {ep.dist.version}" if ep.dist is not None else None
    what = f"entry point {ep.name!r} ({ep.value}{', from ' + package if package else ''})"
    try:
        factory = ep.load()
    except Exception as e:
        raise _raised(ep.name, f"loading {what}", e) from e
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
    return ModelSpec(name, build, f"timm's {timm_name} (ImageNet stem), untrained", 0.1, None, source)


def _raised(spec: str, doing: str, e: BaseException) -> ArchbenchError:
    text = " ".join(str(e).split())[:200]
    return ArchbenchError(f"model {spec!r}: {doing} raised {type(e).__name__}: {text}; fix the model's code")


def check(model_spec: ModelSpec, num_classes: int) -> None:
    """Build the model once on the CPU and classify a test batch: a factory that raises, returns
    something else than an nn.Module, or gives logits of the wrong shape is refused here, before
    any folder is made or any training starts. The global RNG is left as it was."""
    what = model_spec.source.spec or model_spec.name
    with torch.random.fork_rng(devices=[]):
        try:
            model = model_spec.build(num_classes=num_classes)
        except Exception as e:
            raise _raised(what, f"its factory, called as factory(num_classes={num_classes}),", e) from e
        if not isinstance(model, nn.Module):
            raise ArchbenchError(
                f"model {what!r}: its factory returned a {type(model).__name__}, not a torch.nn.Module; "
                f"return the network itself"
            )
        if not any(True for _ in model.parameters()):
            raise ArchbenchError(f"model {what!r}: the network has no parameters to train; return the whole network")
        model.eval()
        try:
            with torch.no_grad():
                out = model(torch.zeros(CHECK_IMAGES, 3, 32, 32))
        except Exception as e:
            raise _raised(what, "classifying a test batch of (2, 3, 32, 32) images", e) from e
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else None
    if shape != (CHECK_IMAGES, num_classes):
        got = f"shape {shape}" if shape is not None else f"a {type(out).__name__}"
        raise ArchbenchError(
            f"model {what!r}: a test batch of {CHECK_IMAGES} images gave {got}, expected "
            f"({CHECK_IMAGES}, {num_classes}) logits; the network must end in num_classes outputs"
        )


def source_mismatch(recorded: dict | None, now: Source) -> str | None:
    """Why the model recorded in a run folder is not the model ``now`` resolves to (None: same)."""
    if not recorded:
        return None  # runs made before sources were recorded
    if recorded.get("sha256") and now.sha256 and recorded["sha256"] != now.sha256:
        return (
            f"{now.file or 'its file'} has changed (SHA-256 {recorded['sha256'][:12]}… when the run began, "
            f"{now.sha256[:12]}… now)"
        )
    if recorded.get("package") and now.package and recorded["package"] != now.package:
        return f"it came from {recorded['package']} and now from {now.package}"
    return None
