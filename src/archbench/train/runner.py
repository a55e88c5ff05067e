"""Wiring for one training run: run folder, data, model, optimizer, epochs, checkpoints.

A run folder holds ``config.json`` (the resolved config), ``model.json`` (``model_record``),
``history.csv``/``.jsonl``,
``last.pt`` (resumable), ``best.pt`` (best weights) and the run's plots. The epoch
loop itself is in ``engine``; this module decides what happens around it.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from archbench.config import Config, protocol_mismatch, read_json, resolve, write_json
from archbench.data import fingerprint
from archbench.data.datasets import get as get_dataset
from archbench.data.pipelines import build_pipeline, num_batches
from archbench.data.sources import CifarData, load_dataset
from archbench.data.subsets import balanced_indices, stratified_holdout
from archbench.errors import ArchbenchError, DivergenceError
from archbench.io_utils import make_dirs, remove_empty_dirs
from archbench.models import count_parameters
from archbench.train import checkpoint, divergence, gradflow, history
from archbench.train.engine import Tally, evaluate, train_one_epoch
from archbench.train.epoch_writer import EpochFiles, EpochWriter, host_copy
from archbench.train.gradflow import GradFlow
from archbench.train.lock import run_lock
from archbench.train.model_record import checked_model, read_model_record, refuse_changed_model, write_model_record
from archbench.train.schedule import multistep_lr
from archbench.train.trackers import catch_up, check_trackers, close_trackers, log_epoch, open_trackers
from archbench.train.training import (
    adopt_optimizer_impl,
    build_model,
    build_optimizer,
    build_step,
    check_device_options,
    input_format,
    resolve_device,
    step_options,
)

CONFIG_NAME = "config.json"
Log = Callable[[str], None]
OnEpoch = Callable[[dict], None]


def load_data(cfg: Config) -> CifarData:
    """The config's dataset: located, verified, and cut to the subsets."""
    data = load_dataset(
        cfg.data_dir,
        download_missing=cfg.download,
        offline=cfg.offline,
        verify=cfg.verify_data,
        quiet=cfg.quiet,
        ds=get_dataset(cfg.dataset),
    )
    return take_subsets(data, cfg.train_subset, cfg.test_subset)


def take_subsets(data: CifarData, train_subset: int | None, test_subset: int | None) -> CifarData:
    if train_subset is not None:
        i = balanced_indices(data.y_train, train_subset, data.num_classes, "--train-subset")
        data = replace(data, x_train=data.x_train[i], y_train=data.y_train[i])
    if test_subset is not None:
        i = balanced_indices(data.y_test, test_subset, data.num_classes, "--test-subset")
        exact = None if data.test_exact is None else data.test_exact[i]
        data = replace(
            data, x_test=data.x_test[i], y_test=data.y_test[i], test_exact=exact, test_index=data.test_indices()[i]
        )
    return data


def hold_out_validation(data: CifarData, n: int, seed: int) -> CifarData:
    """The data a run with ``--val-split n`` trains on: its "test" split is the held-out images."""
    keep, held = stratified_holdout(data.y_train, n, data.num_classes, seed)
    return replace(
        data,
        x_train=data.x_train[keep],
        y_train=data.y_train[keep],
        x_test=data.x_train[held],
        y_test=data.y_train[held],
        test_exact=None,
        test_index=held,
        source=f"{data.source}, {n} training images held out for validation",
    )


def exact_mask(data: CifarData, device: torch.device) -> torch.Tensor | None:
    """Pixel-exact test images, only when some images are not (else nothing to report)."""
    if data.test_exact is None or bool(np.all(data.test_exact)):
        return None
    return torch.from_numpy(data.test_exact).to(device)


@dataclass
class RunState:
    epoch: int  # epochs finished
    best_acc: float
    best_epoch: int
    records: list[dict]
    gradflow: list[list[float]] = field(default_factory=list)  # rows of gradflow.csv
    data: dict[str, str] | None = None  # fingerprint of the data trained on (None: not recorded)


def remove_stale_temp_files(run_dir: Path) -> None:
    """Temp files of writes that a killed process never renamed into place."""
    for tmp in run_dir.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def _has_run_to_continue(run_dir: Path, resume: bool) -> bool:
    """Whether ``run_dir`` holds a checkpointed run, and whether continuing it was asked for."""
    if not (run_dir / checkpoint.LAST).exists():
        return False  # nothing finished yet: any partial files are rewritten by a fresh start
    if not resume:
        raise ArchbenchError(f"{run_dir} already holds a run; pass --resume to continue it, or choose another --out")
    return True


class Run:
    """One model trained under one config in one folder."""

    def __init__(self, cfg: Config, run_dir: Path, log: Log = print, on_epoch: OnEpoch | None = None):
        self.device = resolve_device(cfg.device)
        self.model_spec = checked_model(cfg, log)  # a model that cannot train is refused before any folder is made
        self.cfg = resolve(cfg, self.device.type)
        check_device_options(self.cfg, self.device)
        check_trackers(self.cfg)  # a missing tracker package is refused before any folder is made
        self.run_dir = Path(run_dir)
        self.log = log
        self.on_epoch = on_epoch  # each finished epoch's record, once it is handed to the writer

    # -- state ---------------------------------------------------------------

    def _fresh(self) -> tuple[torch.nn.Module, torch.optim.Optimizer, RunState]:
        model = build_model(self.cfg, self.device)
        return model, build_optimizer(model, self.cfg, self.device), RunState(0, -1.0, 0, [])

    def _restore(self, model, opt) -> RunState:
        path = self.run_dir / checkpoint.LAST
        ckpt = checkpoint.load(path, self.device)
        if ckpt.get("model_name") != self.cfg.model:
            raise ArchbenchError(
                f"checkpoint {path} is for model {ckpt.get('model_name')!r}, not "
                f"{self.cfg.model!r}; choose another --out"
            )
        refuse_changed_model(self.run_dir, self.cfg.model, ckpt.get("model_source"), self.model_spec)
        diffs = protocol_mismatch(ckpt.get("config", {}), self.cfg, extending=True)
        if diffs:
            raise ArchbenchError(
                f"{self.run_dir} holds a run with another protocol ({'; '.join(diffs)}); "
                f"choose another --out or delete that folder"
            )
        checkpoint.load_weights(model, ckpt["model"], path, self.cfg.model)
        try:
            opt.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError, TypeError, IndexError) as e:  # torch's ways of saying "does not fit"
            raise ArchbenchError(
                f"checkpoint {path}: its optimizer state does not fit the model ({e}); the file "
                f"is damaged — {checkpoint.damaged_fix(path)}"
            ) from e
        adopt_optimizer_impl(opt, self.device)
        checkpoint.set_rng_state(ckpt["rng"])
        return RunState(
            ckpt["epoch"],
            ckpt["best_acc"],
            ckpt["best_epoch"],
            list(ckpt["history"]),
            gradflow.current_rows(list(ckpt.get("gradflow", [])), model),
            ckpt.get("data"),
        )

    def check_data(self, state: RunState, data: CifarData) -> dict[str, str]:
        """The fingerprint of ``data``, after refusing it if the run's epochs saw other images."""
        now = fingerprint.fingerprint(data)
        self.refuse_other_data(state.data, now)
        return now

    def refuse_other_data(self, recorded: dict[str, str] | None, now: dict[str, str]) -> None:
        refuse_other_data(self.run_dir, recorded, now)

    def recorded_data(self) -> dict[str, str] | None:
        return recorded_data(self.run_dir)

    # -- training ------------------------------------------------------------

    def train(self, data_fn: Callable[[], CifarData], resume: bool = False) -> RunState:
        """Train (or continue, or reuse) the run; ``data_fn`` is only called if there is work."""
        created = make_dirs(self.run_dir)
        try:
            with run_lock(self.run_dir):
                remove_stale_temp_files(self.run_dir)
                return self._train_locked(data_fn, resume)
        except BaseException:
            remove_empty_dirs(created)  # a run that failed before writing anything leaves no folders
            raise

    def _train_locked(self, data_fn: Callable[[], CifarData], resume: bool) -> RunState:
        cfg = self.cfg
        self._follow_moved_model()  # first: a diverged run is counted, and evaluated, from its record too
        divergence.refuse_retraining(self.run_dir, cfg)
        model, opt, state = self._fresh()
        if _has_run_to_continue(self.run_dir, resume):
            state = self._restore(model, opt)
        if state.epoch >= cfg.epochs:
            gradflow.sync(self.run_dir, gradflow.columns(model), state.gradflow)
            history.sync(self.run_dir, state.records)
            self.log(
                f"[{cfg.model}] finished run found in {self.run_dir} "
                f"({state.epoch} epochs, best val {state.best_acc:.2f}%); reusing it"
            )
            catch_up(cfg, self.run_dir, state.records)
            return state
        data = data_fn()  # before writing anything, repairs included: a refused run is left as it was
        if data.dataset != cfg.dataset:
            raise ArchbenchError(
                f"[{cfg.model}] the run is on {cfg.dataset} but was given {data.source} ({data.dataset})"
            )
        state.data = self.check_data(state, data)
        if cfg.val_split:
            data = hold_out_validation(data, cfg.val_split, cfg.seed)
        gradflow.sync(self.run_dir, gradflow.columns(model), state.gradflow)
        history.sync(self.run_dir, state.records)
        write_json(cfg, self.run_dir / CONFIG_NAME)
        write_model_record(self.run_dir, self.model_spec)
        if state.epoch:
            self.log(f"[{cfg.model}] resuming {self.run_dir} after epoch {state.epoch}")
        fmt = input_format(cfg, self.device)
        pipe = build_pipeline(cfg.pipeline, data, cfg.batch_size, cfg.seed, self.device, cfg.workers, fmt)
        exact = exact_mask(data, self.device)
        step, tally = build_step(model, opt, cfg, self.device, warn=self.log), Tally(self.device)
        grads = GradFlow(model, num_batches(pipe.train_size, cfg.batch_size), cfg.grad_norms_per_epoch)
        trackers = open_trackers(cfg, self.run_dir, state.records)
        if state.epoch == 0:
            self.log(
                f"[{cfg.model}] {count_parameters(model):,} parameters | {pipe.train_size} train / "
                f"{pipe.test_size} test images | {cfg.pipeline} pipeline, {cfg.precision} on {self.device}"
                f"{step_options(cfg, self.device)} | "
                f"out {self.run_dir}"
            )
        writer = EpochWriter(self.run_dir, grads.names)
        completed = False  # every planned epoch trained, saved and logged to every tracker
        try:
            for epoch in range(state.epoch, cfg.epochs):
                record = self._epoch(model, opt, step, tally, pipe, exact, epoch, grads)
                state.gradflow += grads.take(epoch + 1)
                self._commit_epoch(writer, model, opt, state, record)
                log_epoch(trackers, record)
                if self.on_epoch is not None:
                    self.on_epoch(record)
                if epoch == 0 or (epoch + 1) % 10 == 0 or epoch + 1 == cfg.epochs:
                    self.log(summary_line(cfg.model, record, cfg.epochs))
            writer.close()  # the run's own files land before any tracker is closed
            completed = True
        except DivergenceError as e:
            writer.close(raise_errors=False)  # the last finite epoch lands before the outcome is recorded
            divergence.write(self.run_dir, cfg, e)
            raise
        except BaseException:
            writer.close(raise_errors=False)  # the epochs already handed over still land
            raise
        finally:
            close_trackers(trackers, finished=completed)
        return state

    def _follow_moved_model(self) -> None:
        """A run whose model is now given from another place, with the same definition as model.json
        recorded, records that place, so that evaluations and landscapes of the run find the file; a
        changed definition is refused here, before anything is read or written."""
        path = self.run_dir / CONFIG_NAME
        record = read_model_record(self.run_dir)
        if self.cfg.model_spec is None or record is None or not path.is_file():
            return
        refuse_changed_model(self.run_dir, self.cfg.model, record["source"], self.model_spec)
        saved = read_json(path)
        if saved.model_spec != self.cfg.model_spec:
            write_json(saved.replace(model_spec=self.cfg.model_spec), path)
            write_model_record(self.run_dir, self.model_spec)
            self.log(f"[{self.cfg.model}] the run's model file is now {self.cfg.model_spec.rsplit(':', 1)[0]}")

    def _commit_epoch(self, writer: EpochWriter, model, opt, state: RunState, record: dict) -> None:
        """Hand a finished epoch to the writer: best weights, the resumable checkpoint, history.

        The writer lands them in that order, so a crash at any point leaves a consistent
        run: the checkpoint carries the history, and a resume replays an epoch whose
        checkpoint did not land.
        """
        cfg, epoch = self.cfg, record["epoch"]
        state.records.append(record)
        state.epoch = epoch
        snap = host_copy({"model": model.state_dict(), "optimizer": opt.state_dict()}, self.device)
        best = None
        if record["val_acc"] > state.best_acc:
            state.best_acc, state.best_epoch = record["val_acc"], epoch
            best = {
                "model_name": cfg.model,
                "model": snap["model"],
                "epoch": epoch,
                "val_acc": record["val_acc"],
                "config": cfg.to_dict(),
            }
        last = {
            "model_name": cfg.model,
            "model": snap["model"],
            "optimizer": snap["optimizer"],
            "epoch": epoch,
            "best_acc": state.best_acc,
            "best_epoch": state.best_epoch,
            "rng": checkpoint.rng_state(),
            "config": cfg.to_dict(),
            "history": list(state.records),
            "gradflow": list(state.gradflow),
            "data": state.data,
            "model_source": self.model_spec.source.to_dict(),
            "schedule": {
                "kind": "multistep",
                "base_lr": cfg.lr,
                "milestones": list(cfg.milestones),
                "gamma": cfg.gamma,
            },
        }
        writer.submit(EpochFiles(last, [record], best))

    def _diverged(self, epoch: int, what: str, step: int | None) -> DivergenceError:
        kept = f"keeps the checkpoint of epoch {epoch - 1}" if epoch > 1 else "has no checkpoint"
        return DivergenceError(
            f"[{self.cfg.model}] epoch {epoch}: {what}; the run stopped and {self.run_dir} "
            f"{kept} — lower --lr or check the data",
            epoch,
            step,
        )

    def _epoch(self, model, opt, step, tally, pipe, exact, epoch: int, grads: GradFlow) -> dict:
        cfg = self.cfg
        lr = multistep_lr(epoch, cfg.lr, cfg.milestones, cfg.gamma)
        for group in opt.param_groups:
            group["lr"] = lr
        batches = progress(
            pipe.train_batches(epoch),
            num_batches(pipe.train_size, cfg.batch_size),
            f"{cfg.model} {epoch + 1}/{cfg.epochs} train",
            cfg.quiet,
        )
        try:
            tr = train_one_epoch(
                model, batches, step, self.device, tally, after_step=lambda i: grads.after_step(i, step.grads_of)
            )
        except DivergenceError as e:
            raise self._diverged(epoch + 1, str(e), e.step) from e
        batches = progress(
            pipe.test_batches(),
            num_batches(pipe.test_size, pipe.eval_batch_size),
            f"{cfg.model} {epoch + 1}/{cfg.epochs} eval",
            cfg.quiet,
        )
        ev = evaluate(model, batches, self.device, exact, cfg.precision)
        if not math.isfinite(ev["loss"]):
            raise self._diverged(epoch + 1, f"the validation loss is {ev['loss']} (non-finite)", None)
        if ev["nonfinite_logits"]:
            raise self._diverged(epoch + 1, f"{ev['nonfinite_logits']} validation images got non-finite logits", None)
        return {
            "epoch": epoch + 1,
            "lr": lr,
            "train_loss": tr["loss"],
            "train_acc": tr["acc"],
            "val_loss": ev["loss"],
            "val_acc": ev["acc"],
            "val_acc_exact": ev.get("acc_exact"),
            "train_seconds": tr["seconds"],
            "eval_seconds": ev["seconds"],
            "epoch_seconds": tr["seconds"] + ev["seconds"],
        }


def refuse_other_data(run_dir: Path, recorded: dict[str, str] | None, now: dict[str, str]) -> None:
    """Raise if the run in ``run_dir`` recorded other data than ``now`` (older runs recorded none)."""
    then = recorded.get("dataset", "cifar10") if recorded is not None else None  # older runs: CIFAR-10
    if then is not None and then != now.get("dataset", "cifar10"):
        raise ArchbenchError(
            f"{run_dir} was trained on {then}, not {now.get('dataset')}: runs of two datasets are never "
            f"mixed; pass --dataset {then}, or choose another --out"
        )
    differ = [] if recorded is None else fingerprint.differences(recorded, now)
    if differ:
        raise ArchbenchError(
            f"{run_dir} was trained on other data ({' and '.join(differ)} differ): "
            f"{fingerprint.describe(recorded)} then, {fingerprint.describe(now)} now; pass the "
            f"run's data with --data-dir, or choose another --out"
        )


def recorded_data(run_dir: Path) -> dict[str, str] | None:
    """The data fingerprint in a run's last.pt, read without loading its tensors (None: no run yet)."""
    path = Path(run_dir) / checkpoint.LAST
    return checkpoint.load(path, "cpu", mmap=True).get("data") if path.exists() else None


def summary_line(model: str, r: dict, epochs: int) -> str:
    return (
        f"[{model}] epoch {r['epoch']:>3}/{epochs} | lr {r['lr']:.4g} | train loss {r['train_loss']:.4f} "
        f"acc {r['train_acc']:.2f}% | val loss {r['val_loss']:.4f} acc {r['val_acc']:.2f}% | "
        f"{r['epoch_seconds']:.1f} s"
    )


def progress(it, total: int, desc: str, quiet: bool):
    """A tqdm bar on a terminal; the bare iterator otherwise (logs stay clean)."""
    if quiet or not sys.stderr.isatty():
        return it
    from tqdm import tqdm

    return tqdm(it, total=total, desc=desc, leave=False, unit="batch", dynamic_ncols=True)
