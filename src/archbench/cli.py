"""Command line: ``archbench models | train | compare | report | bench | eval | landscape | plot | env``.

Flags only override: the config is defaults <- ``--config`` file <- flags, resolved and
validated in ``config``. Errors a user can fix print one line and exit 1 (``--debug``
shows the traceback).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from archbench.config import MLFLOW_DEFAULT_STORE, Config, from_mapping, load_file, with_model
from archbench.errors import ArchbenchError
from archbench.io_utils import check_writable, os_error

DEFAULT_COMPARE = ("resnet18", "vgg19_bn")
DATASET_NAMES = ("cifar10", "cifar100")  # data.datasets.DATASETS, without importing it for --help
MODEL_FORMS = "a name from 'archbench models', package.module:factory, path/to/file.py:factory or timm:<name>"


class _Version(argparse.Action):
    """``--version``, with the git commit looked up only when asked for."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        from archbench.analysis.environment import version_line

        print(version_line())
        parser.exit(0)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, like every other archbench error
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _training_flags() -> argparse.ArgumentParser:
    p = _Parser(add_help=False, argument_default=argparse.SUPPRESS)
    g = p.add_argument_group("protocol (defaults: the study's)")
    g.add_argument("--config", help="TOML or YAML file of settings; flags override it")
    g.add_argument("--epochs", type=int, help="epochs to train (default 100)")
    g.add_argument("--batch-size", type=int, help="batch size (default 128)")
    g.add_argument("--lr", type=float, help="initial learning rate (default: the model's, 0.1; vgg19 0.01)")
    g.add_argument("--momentum", type=float, help="SGD momentum (default 0.9)")
    g.add_argument("--weight-decay", type=float, help="SGD weight decay (default 5e-4)")
    g.add_argument("--milestones", type=int, nargs="+", help="epochs after which lr *= gamma (default 50 75)")
    g.add_argument("--gamma", type=float, help="lr decay factor at milestones (default 0.1)")
    g.add_argument("--seed", type=int, help="seed for weights, data order and augmentation (default 0)")
    g.add_argument("--dataset", choices=DATASET_NAMES, help="cifar10 (default) or cifar100 (its 100 fine labels)")
    g.add_argument("--pipeline", choices=("fast", "reference"), help="input pipeline (default fast)")
    g.add_argument("--workers", type=int, help="DataLoader workers of the reference pipeline (default 2)")
    g.add_argument(
        "--precision", choices=("auto", "fp32", "bf16"), help="auto (default): bf16 autocast on CUDA, fp32 elsewhere"
    )
    g.add_argument("--train-subset", type=int, metavar="N", help="train on N class-balanced images")
    g.add_argument("--test-subset", type=int, metavar="N", help="evaluate on N class-balanced images")
    g.add_argument(
        "--min-effect",
        type=float,
        metavar="PP",
        help="smallest final-accuracy difference of interest to verdicts (default 0.3 pp)",
    )
    g.add_argument(
        "--val-split",
        type=int,
        metavar="N",
        help="hold out N stratified training images to select the best epoch on "
        "(default: the study's choice, the test set)",
    )
    r = p.add_argument_group("where and how")
    r.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), help="default auto")
    r.add_argument("--compile", action="store_true", help="torch.compile the training forward pass")
    r.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="require CUDA graphs, for any model: a step that cannot be captured is an error (default on CUDA: "
        "graphs for the built-in models, falling back to eager steps with a warning)",
    )
    r.add_argument(
        "--no-cuda-graphs",
        dest="cuda_graphs",
        action="store_false",
        help="eager training steps, no CUDA graphs",
    )
    r.add_argument("--tensorboard", action="store_true", help="also log per-epoch scalars for TensorBoard")
    r.add_argument(
        "--mlflow",
        nargs="?",
        const=MLFLOW_DEFAULT_STORE,
        metavar="URI",
        help="also log to MLflow: to the tracking URI (file:..., sqlite:///..., http://...), or without one to a "
        "file store at OUT/mlruns; put it after the model names, or write --mlflow=URI",
    )
    r.add_argument(
        "--wandb",
        action="store_true",
        help="also log to Weights & Biases (WANDB_MODE=offline: no network, files under RUN_DIR/wandb)",
    )
    r.add_argument(
        "--grad-norms-per-epoch",
        type=int,
        metavar="K",
        help="record per-layer gradient norms K times per epoch (default 4; 0: off)",
    )
    r.add_argument(
        "--data-dir", help="dataset location (else $ARCHBENCH_DATA, ./data, ../shared/data/DATASET, the cache)"
    )
    r.add_argument(
        "--download", action="store_true", help="with --data-dir: download the dataset there if it is not found"
    )
    r.add_argument(
        "--offline",
        action="store_true",
        help="never use the network (also ARCHBENCH_OFFLINE=1); by default a missing dataset is downloaded",
    )
    r.add_argument("--no-verify-data", dest="verify_data", action="store_false", help="skip the data checksum check")
    r.add_argument("--out", help="output folder (default runs)")
    r.add_argument("--resume", action="store_true", help="continue the run found in the output folder")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="archbench", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action=_Version, help="show the version (and git commit) and exit")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    flags = _training_flags()

    p = sub.add_parser("models", help="list the registered models, or check and describe the models named")
    p.add_argument("specs", nargs="*", metavar="MODEL", help=f"models to check and describe: {MODEL_FORMS}")
    p.add_argument("--dataset", choices=DATASET_NAMES, default="cifar10", help="the class count to build them for")
    p = sub.add_parser("train", parents=[flags], help="train one model into OUT/MODEL")
    p.add_argument("model", nargs="?", help=f"{MODEL_FORMS} (default: the --config file's model, else resnet18)")
    p = sub.add_parser(
        "compare", parents=[flags], help="train each model (reusing finished runs) and compare their best weights"
    )
    p.add_argument(
        "models",
        nargs="*",
        default=None,
        help=f"models to compare, each {MODEL_FORMS} (default: {' '.join(DEFAULT_COMPARE)})",
    )
    p.add_argument(
        "--seeds", type=int, nargs="+", metavar="K", help="train every model once per seed, into OUT/<model>/seed<K>/"
    )
    p.add_argument(
        "--landscape",
        action="store_true",
        help="after training, measure every run's loss landscape and curvature (archbench landscape, its defaults)",
    )
    _executor_flags(p)
    p = sub.add_parser("report", help="write report.md and report.html for a compare output folder")
    p.add_argument("out_dir", type=Path, help="the --out folder of archbench compare")
    p.add_argument(
        "--min-effect",
        type=float,
        metavar="PP",
        help="smallest accuracy difference of interest (default: the one compare used)",
    )
    p = sub.add_parser(
        "bench", parents=[flags], help="time each model with each input pipeline (s/epoch, img/s, TFLOP/s, speed-up)"
    )
    p.add_argument(
        "models",
        nargs="*",
        default=None,
        help=f"models to time, each {MODEL_FORMS} (default: {' '.join(DEFAULT_COMPARE)})",
    )
    p.add_argument("--pipelines", default="fast,reference", help="comma-separated (default fast,reference)")
    p.add_argument(
        "--steps",
        metavar="MODE,...",
        help="time each of these training steps: eager, graphs, compile, compile+graphs, comma-separated "
        "(default: the one a run would use: on CUDA graphs for the built-in models, else eager)",
    )
    p.add_argument(
        "--synthetic",
        action="store_true",
        help="random images of CIFAR's shape with the dataset's class count instead of real data",
    )
    p.add_argument("--json", type=Path, help="also write the results as JSON")
    p.add_argument(
        "--concurrent",
        metavar="K,...",
        help="instead: K runs of the --pipeline (default fast) training at once on the device, against one run "
        "alone, e.g. 1,2,4,8 (to choose compare --executor ray --gpus-per-run)",
    )
    p = sub.add_parser("eval", help="reload the best weights of runs and evaluate them on the test set")
    p.add_argument("run_dirs", nargs="+", type=Path)
    p.add_argument("--data-dir")
    p.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto")
    p.add_argument("--test-subset", type=int, help="default: the subset the runs were trained with")
    p.add_argument("--no-verify-data", dest="verify_data", action="store_false")
    p.add_argument("--offline", action="store_true", help="never download the dataset (also ARCHBENCH_OFFLINE=1)")
    p.add_argument("--download", action="store_true", help="with --data-dir: download the dataset there if missing")
    p.add_argument("--out", type=Path, help="also write comparison.csv/.md here")
    p = sub.add_parser(
        "env", help="versions, devices, where CIFAR-10 (the default dataset) is and the cache: paste into a bug report"
    )
    p.add_argument("--data-dir", help="report on this CIFAR-10 location instead of the search order")
    p.add_argument("--download", action="store_true", help="as train's --download")
    p.add_argument("--offline", action="store_true", help="as train's --offline")
    p = sub.add_parser(
        "landscape",
        help="loss surfaces, interpolations and Hessian curvature around runs' trained weights",
        description="Measure the loss landscape of trained runs: 1-D/2-D surfaces along filter-normalized "
        "random directions, the line from the initial weights (and between two seeds), and Hessian "
        "curvature (top eigenvalues, trace). Results go to RUN_DIR/landscape/.",
    )
    p.add_argument("run_dirs", nargs="+", type=Path, help="run folders, or folders holding them (a compare --out)")
    _landscape_flags(p)
    p.add_argument("--out", type=Path, help="folder for the figures across runs (default: COMMON/landscape)")
    p.add_argument("--data-dir", help="dataset location (default: the runs' own, else the usual search)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto")
    p.add_argument("--no-verify-data", dest="verify_data", action="store_false")
    p.add_argument("--offline", action="store_true", help="never download the dataset (also ARCHBENCH_OFFLINE=1)")
    p.add_argument("--download", action="store_true", help="with --data-dir: download the dataset there if missing")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p = sub.add_parser("plot", help="redraw the plots of runs from their history files")
    p.add_argument("paths", nargs="+", type=Path, help="run folders, or folders holding run folders")
    p.add_argument("--out", type=Path, help="folder for the overlay plots (default: the runs' parent)")
    return parser


def _executor_flags(p: argparse.ArgumentParser) -> None:
    from archbench.scale.task import FILES_MODES

    g = p.add_argument_group("executor: where the runs train (default: here, one after another)")
    g.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="local (default): one run after another in this process; ray: one Ray task per run, in parallel "
        "(pip install -e '.[ray]')",
    )
    g.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="a running Ray cluster (host:port of 'ray start --head', or auto); default: a private Ray instance "
        "on this machine, listening on 127.0.0.1 only",
    )
    g.add_argument(
        "--gpus-per-run",
        type=float,
        metavar="F",
        help="GPUs each run reserves; a fraction packs runs onto one GPU (0.25: four per GPU). Default: 1 where "
        "the cluster has GPUs, else 0",
    )
    g.add_argument("--cpus-per-run", type=float, default=1.0, metavar="N", help="CPUs each run reserves (default 1)")
    g.add_argument(
        "--max-retries",
        type=int,
        default=3,
        metavar="K",
        help="times a run is retried after its worker or node is lost (default 3); errors you must fix are not retried",
    )
    g.add_argument(
        "--ray-files",
        choices=FILES_MODES,
        default="auto",
        help="auto (default): workers that see the --out folder (a shared filesystem) write runs there, others "
        "send each finished run folder back; shared: require it; return: always send them back",
    )
    g.add_argument(
        "--ray-setup",
        metavar="MODULE.FUNCTION",
        help="a function each Ray worker calls before its first run, e.g. one that registers your own models",
    )


def ray_options(args: argparse.Namespace):
    """The checked Ray options, with Ray itself imported: a missing Ray is said before any work."""
    from archbench.scale.ray_grid import RayOptions, import_ray

    options = RayOptions(
        address=args.ray_address,
        gpus_per_run=args.gpus_per_run,
        cpus_per_run=args.cpus_per_run,
        max_retries=args.max_retries,
        files=args.ray_files,
        setup=args.ray_setup,
    ).check()
    import_ray(options)
    return options


def _landscape_flags(p: argparse.ArgumentParser) -> None:
    from archbench.analysis.landscape import DEFAULTS, KINDS, WEIGHTS

    gpu, cpu = DEFAULTS["cuda"], DEFAULTS["other"]
    g = p.add_argument_group("what to measure (defaults: on a GPU / elsewhere)")
    g.add_argument(
        "--weights",
        choices=WEIGHTS,
        default="final",
        help="final (default): the weights the verdicts judge (last epoch, or best-on-validation with "
        "--val-split); best or last: that checkpoint",
    )
    g.add_argument("--kind", default="all", help=f"comma-separated, of {', '.join(KINDS)}; or all (default)")
    g.add_argument(
        "--resolution",
        type=int,
        metavar="N",
        help=f"points per axis, odd ({gpu['resolution']} / {cpu['resolution']}); the 2-D grid has N×N",
    )
    g.add_argument("--span", type=float, default=1.0, help="grid over [-X, X] along each direction (default 1)")
    g.add_argument(
        "--images",
        type=int,
        metavar="N",
        help=f"class-balanced training images the loss is taken on ({gpu['images']} / {cpu['images']})",
    )
    g.add_argument("--directions-seed", dest="seed", type=int, default=0, help="seed of directions and probes (0)")
    g.add_argument(
        "--eigenvalues",
        type=int,
        metavar="K",
        help=f"top Hessian eigenvalues ({gpu['eigenvalues']} / {cpu['eigenvalues']})",
    )
    g.add_argument(
        "--trace-samples",
        type=int,
        metavar="M",
        help=f"Hutchinson probes of the trace ({gpu['trace_samples']} / {cpu['trace_samples']})",
    )
    g.add_argument("--density", action="store_true", help="also the Hessian eigenvalue density (stochastic Lanczos)")


def landscape_settings(args: argparse.Namespace):
    from archbench.analysis.landscape import KINDS, Settings

    kinds = KINDS if args.kind.strip() == "all" else tuple(k.strip() for k in args.kind.split(",") if k.strip())
    return Settings(
        kinds=kinds,
        weights=args.weights,
        resolution=args.resolution,
        span=args.span,
        images=args.images,
        seed=args.seed,
        eigenvalues=args.eigenvalues,
        trace_samples=args.trace_samples,
        density=args.density,
    )


def config_from_args(args: argparse.Namespace) -> Config:
    file_values = load_file(args.config) if getattr(args, "config", None) else {}
    cfg = from_mapping(file_values, source=str(getattr(args, "config", "config")))
    skip = {
        "config",
        "command",
        "debug",
        "resume",
        "model",
        "models",
        "pipelines",
        "steps",
        "synthetic",
        "json",
        "concurrent",
        "seeds",
        "landscape",
        "executor",
        "ray_address",
        "gpus_per_run",
        "cpus_per_run",
        "max_retries",
        "ray_files",
        "ray_setup",
    }
    flags = {k: v for k, v in vars(args).items() if k not in skip}
    return from_mapping(flags, base=cfg, source="command line")


def log(msg: str) -> None:
    print(msg, flush=True)


def cmd_models(args) -> int:
    """The registered models (one that cannot be built is listed as such), or the models named,
    each checked as train would check it (a broken one is an error)."""
    from archbench.data.datasets import get as get_dataset
    from archbench.models.specs import available, entry_points, parse

    classes = get_dataset(args.dataset).num_classes
    if args.specs:
        rows = [_model_row(*parse(text), classes) for text in args.specs]
    else:
        rows = [_model_row(name, None, classes, listing=True) for name in available()]
    width = max(10, *(len(r[0]) for r in rows))
    log(f"{'name':<{width}} {'parameters':>12} {'(M)':>7}  description")
    for name, params, text in rows:
        count = f"{params:>12,} {params / 1e6:>7.2f}" if params is not None else f"{'-':>12} {'-':>7}"
        for i, line in enumerate(text):
            log(f"{name if i == 0 else '':<{width}} {count if i == 0 else ' ' * 20}  {line}")
    from archbench.models import MODELS

    for name in entry_points().keys() & MODELS.keys():
        log(f"(an installed package's entry point {name!r} is not used: a built-in model has that name)")
    return 0


def _model_row(name: str, spec: str | None, classes: int, listing: bool = False) -> tuple:
    """(name, parameters or None, lines of text) for ``archbench models``."""
    from archbench.models import count_parameters
    from archbench.models.specs import check, resolve

    try:
        s = resolve(name, spec)
        notes = check(s, classes) if s.source.kind != "builtin" else []
    except ArchbenchError as e:
        if not listing:
            raise
        return name, None, [f"cannot be used: {e}"]
    text = [s.description + (f" [plain twin of {s.plain_twin_of}]" if s.plain_twin_of else ""), *notes]
    if s.source.kind != "builtin":
        where = s.source.package or (s.source.file if s.source.kind != "file" else None)  # a file spec names it
        text.append(f"{s.source.kind}: {s.source.spec}" + (f" ({where})" if where else ""))
    return s.name, count_parameters(s.build(num_classes=classes)), text


def _data_loader(cfg: Config) -> Callable:
    """Load the config's dataset on first use only, then share it between runs."""
    from archbench.train.runner import load_data

    cache = {}

    def get():
        if "data" not in cache:
            cache["data"] = load_data(cfg)
        return cache["data"]

    return get


def cmd_train(args) -> int:
    from archbench.analysis.plots import plot_run
    from archbench.train.runner import Run

    cfg = config_from_args(args)
    if args.model is not None:
        cfg = with_model(cfg, args.model)
    run_dir = Path(cfg.out) / cfg.model
    Run(cfg, run_dir, log).train(_data_loader(cfg), resume=getattr(args, "resume", False))
    plot_run(run_dir)
    log(f"[{cfg.model}] done: history, checkpoints and plots in {run_dir}")
    return 0


def cmd_compare(args) -> int:
    from archbench.analysis.compare import FailedRun, RunRef, evaluate_run, relative_dir
    from archbench.analysis.plots import plot_run
    from archbench.errors import DivergenceError
    from archbench.train.runner import Run

    started = time.perf_counter()
    cfg = config_from_args(args)
    model_cfgs = _model_configs(cfg, args.models or _default_models(args))
    args.models = [c.model for c in model_cfgs]  # from here on: the names the runs are filed under
    if len(set(args.seeds or [])) != len(args.seeds or []):
        raise ArchbenchError(f"a seed is named twice in {' '.join(map(str, args.seeds))}; name each once")
    out = Path(cfg.out)
    grid = [
        (m, out / m.model) if seed is None else (m.replace(seed=seed), out / m.model / f"seed{seed}")
        for m in model_cfgs
        for seed in (args.seeds or [None])
    ]
    data = _data_loader(cfg)
    if args.executor == "ray":
        from archbench.train.model_record import checked_model
        from archbench.train.trackers import check_trackers

        options = ray_options(args)  # bad values refused before the data is read
        check_trackers(cfg)
        for model_cfg in model_cfgs:
            checked_model(model_cfg)  # on the driver: a broken model never reaches a worker
        _refuse_runs_on_other_data(grid, data)
        return _compare_on_ray(args, cfg, grid, data, options, started)
    runs = [Run(run_cfg, run_dir, log) for run_cfg, run_dir in grid]
    _refuse_runs_on_other_data(grid, data)
    for run in runs:  # a finished run is reused, an unfinished one resumed, a diverged one counted
        try:
            run.train(data, resume=True)
        except DivergenceError as e:
            log(_diverged_line(str(e), run.cfg.model))
        plot_run(run.run_dir)
    results = [evaluate_run(run.run_dir, data(), run.device) for run in runs]
    refs = [RunRef(r.cfg.model, r.cfg.seed, relative_dir(r.run_dir, out)) for r in runs]
    failed: list[FailedRun] = []
    _finish_compare(args, cfg, (refs, results, failed), data, runs[0].device, None, started)
    return 0


def _default_models(args: argparse.Namespace) -> list[str]:
    """compare's and bench's models when none are named: the study's pair. A --config file's
    ``model`` is train's; here it is refused rather than silently replaced by the pair."""
    if getattr(args, "config", None) and "model" in load_file(args.config):
        raise ArchbenchError(
            f"{args.config} sets model, but {args.command} takes its models on the command line: name them "
            f"(archbench {args.command} MODEL ...), or take model out of the file"
        )
    return list(DEFAULT_COMPARE)


def _model_configs(cfg: Config, texts: list[str]) -> list[Config]:
    """``cfg`` for each model named (names or specs); two that would share a run folder are refused."""
    cfgs = [with_model(cfg, text) for text in texts]
    names = [c.model for c in cfgs]
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice is not None:
        named = [t for t, c in zip(texts, cfgs) if c.model == twice]
        raise ArchbenchError(
            f"{' and '.join(named)} are both filed as {twice!r}; name each model once (rename a factory if two "
            f"files use the same name)"
        )
    return cfgs


def _diverged_line(message: str, model: str) -> str:
    return f"{message}\n[{model}] divergence recorded as this run's outcome; the comparison goes on"


def _refuse_runs_on_other_data(grid: list, data: Callable) -> None:
    """Every run already begun must have trained on these images: checked before any trains."""
    from archbench.data.fingerprint import fingerprint
    from archbench.train.runner import recorded_data, refuse_other_data

    recorded = [recorded_data(run_dir) for _, run_dir in grid]
    if any(r is not None for r in recorded):
        now = fingerprint(data())
        for (_, run_dir), fp in zip(grid, recorded):
            refuse_other_data(run_dir, fp, now)


def _compare_on_ray(args, cfg: Config, grid: list, data: Callable, options, started: float) -> int:
    from archbench.analysis.compare import FailedRun, RunRef, read_final, relative_dir
    from archbench.scale.ray_grid import run_grid
    from archbench.scale.task import DIVERGED, FAILED, INTERRUPTED
    from archbench.train.training import resolve_device

    out = Path(cfg.out)
    outcomes = run_grid(grid, data(), out, options, log)
    kept = [(c, d, o) for (c, d), o in zip(grid, outcomes) if o.status not in (FAILED, INTERRUPTED)]
    failed = [
        FailedRun(c.model, c.seed, relative_dir(d, out), o.message)
        for (c, d), o in zip(grid, outcomes)
        if o.status in (FAILED, INTERRUPTED)
    ]
    for c, _, o in kept:
        if o.status == DIVERGED:
            log(_diverged_line(o.message, c.model))
    if not kept:
        raise ArchbenchError(f"every run of the grid failed ({_failures(failed)}); fix the cause and run compare again")
    refs = [RunRef(c.model, c.seed, relative_dir(d, out)) for c, d, _ in kept]
    results = [read_final(d) for _, d, _ in kept]
    devices = sorted({o.device for _, _, o in kept if o.device})
    where = f"{', '.join(devices) or 'runs reused'} (Ray: {len(grid)} runs as tasks)"
    # the driver measures landscapes itself: on its own GPU if it has one
    device = resolve_device("auto" if cfg.device == "cuda" else cfg.device)
    _finish_compare(args, cfg, (refs, results, failed), data, device, where, started)
    if failed:
        raise ArchbenchError(
            f"{len(failed)} of {len(grid)} runs failed ({_failures(failed)}); the report covers the other "
            f"{len(kept)} — fix the cause and run the same compare again to add them (finished runs are reused)"
        )
    return 0


def _failures(failed: list) -> str:
    return "; ".join(f"{f.dir}: {(f.reason.strip().splitlines() or ['?'])[0]}" for f in failed)


def _finish_compare(args, cfg: Config, grid_results: tuple, data: Callable, device, where, started: float) -> None:
    """The compare folder's files from the runs' results: manifest, table, landscapes, report."""
    from archbench.analysis.compare import Manifest, protocol_note, table_markdown, write_manifest, write_outputs
    from archbench.analysis.environment import describe
    from archbench.analysis.evidence import accuracy_evidence, accuracy_line, load
    from archbench.analysis.report import write_report
    from archbench.config import read_json
    from archbench.train.runner import CONFIG_NAME
    from archbench.train.trackers import log_comparison

    refs, results, failed = grid_results
    out = Path(cfg.out)
    environment = describe(device, data(), time.perf_counter() - started)
    if where is not None:
        environment["device"] = where
    models = [m for m in args.models if any(r.model == m for r in refs)]
    write_manifest(out, Manifest(models, refs, cfg.min_effect, environment, failed))
    run_dirs = [out / r.dir for r in refs]
    _, by_model = load(out)
    names = list(by_model)
    deltas = [accuracy_line(names[0], b, accuracy_evidence(by_model[names[0]], by_model[b])) for b in names[1:]]
    write_outputs(out, results, run_dirs, protocol_note(read_json(run_dirs[0] / CONFIG_NAME)), deltas)
    if args.landscape:
        from archbench.analysis.landscape import Settings, training_images

        # compare's data is already cut to the runs' subsets; cutting it again keeps every image
        def images(run_dir: Path, run_cfg: Config):
            return training_images(run_dir, run_cfg, data())

        measured = [d for d, res in zip(run_dirs, results) if res.last is not None]
        measure_landscapes(measured, Settings(), images, device, out / "landscape", cfg.quiet)
    report = write_report(out)
    log("\n" + table_markdown(results))
    for line in deltas:
        log(line)
    log(f"\nWrote {out / 'comparison.md'}, {out / 'comparison.csv'}, {report[0]}, {report[1]} and figures under {out}")
    log(f"compare took {time.perf_counter() - started:.1f} s (wall clock, data loading to report)")
    for where_logged in log_comparison(cfg, out, list(args.models), args.seeds):
        log(f"Logged the comparison: {where_logged}")


def cmd_report(args) -> int:
    from archbench.analysis.report import write_report

    if args.out_dir.is_dir():
        check_writable(args.out_dir / "report.md")  # before the statistics and figures, not after
    md, html = write_report(args.out_dir, args.min_effect)
    log(f"Wrote {md} and {html}")
    return 0


# Timed epochs after the warm-up one, and on CPU a small default data size, so that a
# plain `archbench bench` finishes in minutes anywhere.
BENCH_EPOCHS = {"cuda": 2, "other": 1}
BENCH_CPU_SUBSET = 256


def cmd_bench(args) -> int:
    import torch

    from archbench.bench import STEP_MODES, add_speedups, bench_one, step_config, synthetic_cifar, table, write_json
    from archbench.config import PIPELINES
    from archbench.train.model_record import checked_model
    from archbench.train.training import resolve_device

    cfg = config_from_args(args)
    model_cfgs = _model_configs(cfg, args.models or _default_models(args))
    for m in model_cfgs:
        checked_model(m)  # a broken model fails in one line before minutes of timing
    device = resolve_device(cfg.device)
    pipelines = _listed("--pipelines", args.pipelines, PIPELINES)
    steps = _listed("--steps", args.steps, STEP_MODES) if args.steps else [None]
    if args.steps and args.concurrent:
        raise ArchbenchError("--steps and --concurrent do not go together: --concurrent times the runs' own step")
    if device.type != "cuda" and any(s and s.endswith("graphs") for s in steps):
        raise ArchbenchError(f"--steps {args.steps!r}: CUDA graphs need a CUDA device, but the bench runs on {device}")
    if args.json:
        check_writable(args.json)  # before minutes of timing, not after
    epochs = getattr(args, "epochs", BENCH_EPOCHS["cuda" if device.type == "cuda" else "other"])
    if device.type != "cuda":
        cfg = cfg.replace(
            train_subset=cfg.train_subset or BENCH_CPU_SUBSET, test_subset=cfg.test_subset or BENCH_CPU_SUBSET
        )
    if args.synthetic:
        data = synthetic_cifar(cfg.train_subset or 50_000, cfg.test_subset or 10_000, cfg.seed, cfg.dataset)
    else:
        from archbench.train.runner import load_data

        data = load_data(cfg)
    log(
        f"bench: {len(data.y_train)} train / {len(data.y_test)} test images ({data.source}), "
        f"{epochs} timed epoch(s) after 1 warm-up, on {device}"
    )
    if args.concurrent:
        return _bench_concurrent(args, [_same_protocol(m, cfg) for m in model_cfgs], data, epochs, device)
    results = []
    for m in model_cfgs:
        for pipeline in pipelines:
            for mode in steps:
                run_cfg = _same_protocol(m, cfg).replace(pipeline=pipeline)
                results.append(bench_one(run_cfg if mode is None else step_config(run_cfg, mode), data, epochs, log))
                log(
                    f"  {m.model} {pipeline} {results[-1].step}: {results[-1].train_s_per_epoch:.3f} s/epoch train, "
                    f"{results[-1].eval_s_per_epoch:.3f} s/epoch eval"
                )
    add_speedups(results)
    log("\n" + table(results))
    if args.json:
        write_json(
            results,
            args.json,
            {"torch": torch.__version__, "device": str(device), "config": cfg.to_dict(), "timed_epochs": epochs},
        )
        log(f"\nWrote {args.json}")
    return 0


def _listed(flag: str, text: str, allowed: tuple[str, ...]) -> list[str]:
    """The comma-separated values of ``flag``, each one of ``allowed``."""
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values or any(v not in allowed for v in values):
        raise ArchbenchError(f"{flag} {text!r}: allowed values are {', '.join(allowed)}")
    return values


def _same_protocol(model_cfg: Config, cfg: Config) -> Config:
    """The bench's settings (subsets included) for one model."""
    return cfg.replace(model=model_cfg.model, model_spec=model_cfg.model_spec)


def _bench_concurrent(args, model_cfgs: list[Config], data, epochs: int, device) -> int:
    import torch

    from archbench.bench import write_json
    from archbench.scale import concurrent

    counts = concurrent.parse_counts(args.concurrent)
    rows = []
    for m in model_cfgs:
        by_k = {}
        for k in counts:
            by_k[k] = concurrent.measure(m, data, epochs, k)
            each = ", ".join(f"{r.images_per_s:,.0f}" for r in by_k[k])
            log(f"  {m.model} x{k} at once: {each} img/s")
        rows += concurrent.summarize(m.model, by_k)
    log("\n" + concurrent.table(rows))
    for m in model_cfgs:
        log(concurrent.advice([r for r in rows if r.model == m.model], device.type == "cuda"))
    cfg = model_cfgs[0]
    if args.json:
        meta = {"torch": torch.__version__, "device": str(device), "config": cfg.to_dict(), "timed_epochs": epochs}
        write_json(rows, args.json, meta, key="concurrent")
        log(f"\nWrote {args.json}")
    return 0


def cmd_eval(args) -> int:
    from archbench.analysis.compare import by_model, evaluate_run, table_markdown, write_outputs
    from archbench.config import read_json
    from archbench.data.datasets import get as get_dataset
    from archbench.data.sources import load_dataset
    from archbench.train.runner import CONFIG_NAME, take_subsets
    from archbench.train.training import resolve_device

    if args.out:
        check_writable(args.out / "comparison.md")
    datasets = {read_json(d / CONFIG_NAME).dataset for d in args.run_dirs}
    if len(datasets) > 1:
        raise ArchbenchError(
            f"the runs were trained on different datasets ({', '.join(sorted(datasets))}); "
            f"evaluate each dataset's runs on their own"
        )
    subset = args.test_subset
    if subset is None:
        subsets = {read_json(d / CONFIG_NAME).test_subset for d in args.run_dirs}
        if len(subsets) > 1:
            raise ArchbenchError(
                f"the runs were tested on different subsets ({sorted(subsets, key=str)}); "
                f"pass --test-subset N to evaluate them on the same images"
            )
        subset = subsets.pop()
    data = take_subsets(
        load_dataset(
            args.data_dir,
            download_missing=args.download,
            offline=args.offline,
            verify=args.verify_data,
            with_train=False,
            ds=get_dataset(datasets.pop()),
        ),
        None,
        subset,
    )
    device = resolve_device(args.device)
    results = [evaluate_run(d, data, device, write=False) for d in args.run_dirs]
    groups = list(by_model([r for r in results if r.final is not None]).items())

    def mean(rs):
        return sum(r.final.acc for r in rs) / len(rs)

    deltas = [
        f"Δ final accuracy ({groups[0][0]} − {b}) = {mean(groups[0][1]) - mean(rb):+.2f} pp (difference of "
        f"means; archbench compare adds intervals and tests)"
        for b, rb in groups[1:]
    ]
    log(table_markdown(results))
    for line in deltas:
        log(line)
    if args.out:
        write_outputs(
            args.out, results, args.run_dirs, f"Evaluated on {len(data.y_test)} test images from {data.source}.", deltas
        )
    return 0


def _run_dirs(paths: list[Path]) -> list[Path]:
    """Run folders: the paths themselves, or every folder below them that holds a history."""
    found = []
    for p in paths:
        if (p / "history.jsonl").is_file() or (p / "history.csv").is_file():
            found.append(p)
            continue
        inner = sorted({h.parent for name in ("history.jsonl", "history.csv") for h in p.rglob(name)})
        if not inner:
            raise ArchbenchError(f"{p}: no history files here or in its sub-folders; pass run folders")
        found.extend(inner)
    return found


def cmd_plot(args) -> int:
    from archbench.analysis.compare import MANIFEST_NAME, by_model, read_manifest
    from archbench.analysis.plots import draw_run, plot_overlay, read_run

    if args.out:
        check_writable(args.out / "overlay_loss.png")
    runs = [read_run(d) for d in _run_dirs(args.paths)]  # every folder read before any figure is drawn
    for run in runs:
        log(" ".join(str(p) for p in draw_run(run)))
    if len(runs) > 1:
        out = args.out or Path(os.path.commonpath([r.dir.resolve() for r in runs]))
        groups = by_model([r for r in runs if r.records], key=lambda r: r.label)
        if (out / MANIFEST_NAME).is_file():  # a compare folder: keep its report's model order and colours
            order = read_manifest(out).models
            groups = dict(sorted(groups.items(), key=lambda g: order.index(g[0]) if g[0] in order else len(order)))
        log(" ".join(str(p) for p in plot_overlay({m: [r.records for r in rs] for m, rs in groups.items()}, out)))
    return 0


def cmd_env(args) -> int:
    from archbench.analysis.environment import machine_report

    for line in machine_report(args.data_dir, args.download, args.offline):
        log(line)
    return 0


def _training_images(data_dir, download: bool, offline: bool, verify: bool, quiet: bool) -> Callable:
    """(run folder, its config) -> the images it trained on; each dataset read once per location."""
    from archbench.analysis.landscape import training_images
    from archbench.data.datasets import get as get_dataset
    from archbench.data.sources import load_dataset

    loaded: dict = {}

    def get(run_dir: Path, cfg: Config):
        where = (data_dir or cfg.data_dir, cfg.dataset)
        if where not in loaded:
            loaded[where] = load_dataset(
                where[0],
                download_missing=download,
                offline=offline or cfg.offline,
                verify=verify,
                quiet=quiet,
                ds=get_dataset(cfg.dataset),
            )
        return training_images(run_dir, cfg, loaded[where])

    return get


def measure_landscapes(run_dirs: list[Path], settings, images: Callable, device, out: Path | None, quiet: bool):
    from archbench.analysis import landscape, landscape_study
    from archbench.config import read_json
    from archbench.data.datasets import get as get_dataset
    from archbench.train.runner import CONFIG_NAME, progress

    classes = max(get_dataset(read_json(d / CONFIG_NAME).dataset).num_classes for d in run_dirs)
    s = landscape.resolve(settings, device, classes)
    out = out or landscape_study.overlay_dir(run_dirs)
    log(
        f"landscape on {device}: {', '.join(s.kinds)}; {s.resolution} points per axis over ±{s.span:g}, "
        f"{s.images} training images, {s.weights} weights, directions seed {s.seed}"
    )

    def bar(it, total, name):
        return progress(it, total, f"landscape {name}", quiet)

    started = time.perf_counter()
    figures = landscape_study.measure_runs(run_dirs, s, images, device, out, log, bar)
    folders = sorted({str(f.parent) for f in figures})
    log(f"landscape took {time.perf_counter() - started:.1f} s; {len(figures)} figures in {', '.join(folders)}")


def cmd_landscape(args) -> int:
    from archbench.analysis.compare import MANIFEST_NAME
    from archbench.analysis.report import write_report
    from archbench.train.training import resolve_device

    if args.out:
        check_writable(args.out / "landscape_2d_shared.png")
    settings = landscape_settings(args)
    device = resolve_device(args.device)
    from archbench.analysis.landscape import resolve

    resolve(settings, device)  # bad values refused before any folder is read
    run_dirs = _run_dirs(args.run_dirs)
    images = _training_images(args.data_dir, args.download, args.offline, args.verify_data, args.quiet)
    measure_landscapes(run_dirs, settings, images, device, args.out, args.quiet)
    for p in args.run_dirs:
        if (p / MANIFEST_NAME).is_file():  # a compare folder: its report gains the Landscape section
            md, html = write_report(p)
            log(f"Wrote {md} and {html}")
    return 0


COMMANDS = {
    "models": cmd_models,
    "train": cmd_train,
    "compare": cmd_compare,
    "report": cmd_report,
    "bench": cmd_bench,
    "eval": cmd_eval,
    "plot": cmd_plot,
    "landscape": cmd_landscape,
    "env": cmd_env,
}


class Terminated(KeyboardInterrupt):
    """SIGTERM (what schedulers and ``docker stop`` send), handled like Ctrl-C."""


@contextmanager
def sigterm_as_interrupt():
    """Turn the first SIGTERM into ``Terminated``, so pending checkpoint writes finish and
    nothing half-written is left; later ones are ignored while that happens."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = []

    def handler(signum, frame):
        if not fired:
            fired.append(signum)
            raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with sigterm_as_interrupt():
            return COMMANDS[args.command](args)
    except ArchbenchError as e:
        if args.debug:
            traceback.print_exc()
        print(f"archbench: error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # the reader of stdout went away (`archbench ... | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush cannot fail too
        print("archbench: stopped: the program reading its output exited", file=sys.stderr)
        return 141
    except OSError as e:
        if e.filename is None:  # not about a file: a bug, keep the traceback
            raise
        if args.debug:  # a file-system failure no narrower handler named
            traceback.print_exc()
        print(f"archbench: error: {os_error('access', e.filename, e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        what, code = ("terminated (SIGTERM)", 143) if isinstance(e, Terminated) else ("interrupted", 130)
        print(f"archbench: {what}; finished epochs are saved — rerun with --resume to continue", file=sys.stderr)
        return code
