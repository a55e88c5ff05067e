"""Loss landscapes: filter normalization and its scale invariance, grids that resume, the
line from the initial weights, and ``archbench landscape`` / ``compare --landscape`` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import tiny_model
from archbench.analysis import landscape as ls
from archbench.analysis.directions import directions, filter_normalize, move_to, state_of, weights_of
from archbench.analysis.probe import Probe
from archbench.cli import main
from archbench.config import Config
from archbench.data.datasets import CIFAR10
from archbench.errors import ArchbenchError
from archbench.models.registry import MODELS
from archbench.train.runner import Run
from conftest import make_official, synthetic

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def tiny_registered(monkeypatch):
    monkeypatch.setitem(MODELS, tiny_model.NAME, tiny_model.SPEC)
    for name, spec in tiny_model.TWINS.items():
        monkeypatch.setitem(MODELS, name, spec)


def _cfg(**kw) -> Config:
    base = dict(model=tiny_model.NAME, epochs=2, batch_size=16, milestones=(1,), device="cpu", quiet=True)
    return Config(**{**base, **kw})


def _trained(tmp_path, **kw):
    data = synthetic(60, 20)
    run_dir = tmp_path / "run"
    Run(_cfg(**kw), run_dir, log=lambda m: None).train(lambda: data)
    return run_dir, data


def _no_bar(it, total, name):
    return it


def _probe(model, data, images=20):
    return Probe(model, data.x_train, data.y_train, images, CPU, 8, CIFAR10)


def _settings(**kw) -> ls.Settings:
    return ls.resolve(ls.Settings(**{"resolution": 5, "images": 20, "eigenvalues": 1, "trace_samples": 2, **kw}), CPU)


# ---------------------------------------------------------------- directions


def test_each_filter_of_a_direction_has_the_norm_of_its_weights_filter_and_1d_parameters_get_none():
    model = tiny_model.Tiny()
    weights = weights_of(model)
    (d,) = directions(weights, 1, seed=3)
    for (name, w), dw in zip(model.named_parameters(), d):
        if w.dim() == 1:
            assert torch.count_nonzero(dw) == 0, name  # biases and batch-norm parameters stay put
        else:
            torch.testing.assert_close(dw.flatten(1).norm(dim=1), w.detach().flatten(1).norm(dim=1))
    again = directions(weights, 1, seed=3)[0]
    other = directions(weights, 1, seed=4)[0]
    assert all(torch.equal(a, b) for a, b in zip(d, again))
    assert not torch.equal(d[0], other[0])


def test_filter_normalize_scales_a_filter_of_zeros_to_zero_not_nan():
    w = torch.zeros(2, 3, 3, 3)
    w[1] = 1.0
    d = filter_normalize(torch.randn(2, 3, 3, 3), w)
    assert torch.all(d[0] == 0) and torch.isfinite(d).all()


def _rescaled(model: torch.nn.Module, factors: torch.Tensor) -> torch.nn.Module:
    """The same function with the first conv's filters scaled by ``factors``: its BN's running
    statistics scale with them (as batch statistics would), so nothing downstream changes."""
    other = tiny_model.Tiny()
    other.load_state_dict(model.state_dict())
    conv, bn = other.features[0], other.features[1]
    with torch.no_grad():
        conv.weight.mul_(factors.view(-1, 1, 1, 1))
        bn.running_mean.mul_(factors)
        bn.running_var.mul_(factors**2)
    return other.eval()


def _surface(model, data, dirs, t):
    origin, probe = weights_of(model), _probe(model, data)
    out = []
    for a in t:
        for b in t:
            move_to(model, origin, [(a, dirs[0]), (b, dirs[1])])
            out.append(probe.measure()[0])
    return np.array(out)


def test_filter_normalized_surfaces_do_not_see_the_scale_of_a_bn_followed_conv_but_raw_directions_do():
    torch.manual_seed(0)
    data = synthetic(40, 10)
    model = tiny_model.Tiny().eval()
    with torch.no_grad():  # running statistics a trained net would have
        model.features[1].running_mean.uniform_(-0.5, 0.5)
        model.features[1].running_var.uniform_(0.5, 2.0)
    scaled = _rescaled(model, torch.linspace(0.2, 20.0, 8))
    t = np.linspace(-1, 1, 3)
    base_surface = _surface(model, data, directions(weights_of(model), 2, seed=0), t)
    scaled_surface = _surface(scaled, data, directions(weights_of(scaled), 2, seed=0), t)
    np.testing.assert_allclose(scaled_surface, base_surface, rtol=1e-4)

    raw = [
        [torch.randn(w.shape, generator=torch.Generator().manual_seed(k)) for w in weights_of(model)] for k in (0, 1)
    ]
    assert not np.allclose(_surface(model, data, raw, t), _surface(scaled, data, raw, t), rtol=1e-2)


# ---------------------------------------------------------------- one run


def test_the_surfaces_centre_is_the_loss_of_the_weights_themselves(tmp_path):
    run_dir, data = _trained(tmp_path)
    subject = ls.load_subject(run_dir, "final", CPU)
    probe = _probe(subject.model, data)
    at_weights = probe.measure()
    s = _settings(kinds=("1d", "2d"))
    grids = ls.Grids(tmp_path / "p.npz", "k", print)
    out = ls.surfaces(subject, probe, s, grids, _no_bar)
    assert out["loss_2d"][2, 2] == at_weights[0] and out["loss_1d"][2] == at_weights[0]
    assert out["acc_2d"][2, 2] == at_weights[1]
    assert probe.measure() == at_weights  # the model is back at its weights
    assert np.all(out["loss_2d"] >= 0) and out["loss_2d"].max() > at_weights[0]


def test_initial_weights_are_the_ones_training_started_from(tmp_path, monkeypatch):
    import archbench.train.runner as runner

    seen = []
    real = runner.build_optimizer

    def spy(model, cfg, device):
        seen.append(state_of(model))  # the model as training gets it, before any step
        return real(model, cfg, device)

    monkeypatch.setattr(runner, "build_optimizer", spy)
    _trained(tmp_path, seed=7)
    rebuilt = ls.initial_state(_cfg(seed=7), CPU)
    assert seen[0].keys() == rebuilt.keys()
    assert all(torch.equal(seen[0][k], rebuilt[k]) for k in rebuilt)
    other_seed = ls.initial_state(_cfg(seed=8), CPU)
    assert not torch.equal(other_seed["fc.weight"], rebuilt["fc.weight"])


def test_the_interpolations_end_points_are_the_initial_and_final_losses(tmp_path):
    run_dir, data = _trained(tmp_path, seed=2)
    subject = ls.load_subject(run_dir, "final", CPU)
    probe = _probe(subject.model, data)
    final = probe.measure()
    start = ls.initial_state(subject.cfg, CPU)
    initial_model = tiny_model.Tiny()
    initial_model.load_state_dict(start)
    initial = _probe(initial_model, data).measure()
    line = ls.interpolation(subject, probe, start, _settings(), ls.Grids(tmp_path / "p.npz", "k", print), _no_bar, "i")
    alpha = line["alpha"]
    assert alpha[0] == pytest.approx(-0.25) and alpha[-1] == pytest.approx(1.25)
    assert line["loss"][alpha == 0.0][0] == initial[0] and line["acc"][alpha == 0.0][0] == initial[1]
    assert line["loss"][alpha == 1.0][0] == final[0]
    assert probe.measure() == final
    assert initial[0] != final[0]


class Interrupt(Exception):
    pass


def _bar_stopping_after(n):
    def bar(it, total, name):
        for i, x in enumerate(it):
            if name == "2d" and i == n:
                raise Interrupt()
            yield x

    return bar


def test_a_killed_grid_continues_where_it_stopped_and_ends_equal_to_an_unbroken_one(tmp_path, monkeypatch):
    run_dir, data = _trained(tmp_path)
    s = _settings(kinds=("2d",), resolution=5)
    images = lambda run, cfg: (data.x_train, data.y_train)  # noqa: E731
    monkeypatch.setattr(ls, "SAVE_EVERY_S", 0.0)  # save after every point
    with pytest.raises(Interrupt):
        ls.measure_run(run_dir, s, images, CPU, print, _bar_stopping_after(11))
    folder = ls.folder_of(run_dir)
    assert (folder / ls.PARTIAL).is_file() and not (folder / ls.JSON).exists()
    with np.load(folder / ls.PARTIAL) as f:
        assert int(np.isfinite(f["loss_2d"]).sum()) == 11

    measured, lines = [], []
    real = Probe.measure
    monkeypatch.setattr(Probe, "measure", lambda self: measured.append(1) or real(self))
    info, arrays = ls.measure_run(run_dir, s, images, CPU, lines.append, _no_bar)
    assert len(measured) == 25 - 11
    assert any("11 points already measured" in line for line in lines)
    assert not (folder / ls.PARTIAL).exists()

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    for name in ("config.json", "last.pt", "best.pt"):
        (fresh / name).write_bytes((run_dir / name).read_bytes())
    _, unbroken = ls.measure_run(fresh, s, images, CPU, print, _no_bar)
    np.testing.assert_array_equal(arrays["loss_2d"], unbroken["loss_2d"])

    measured.clear()
    lines.clear()
    ls.measure_run(run_dir, s, images, CPU, lines.append, _no_bar)  # the same settings: reused
    assert not measured and "reusing it" in lines[-1]
    ls.measure_run(run_dir, ls.resolve(ls.Settings(**{**s.__dict__, "span": 0.5}), CPU), images, CPU, print, _no_bar)
    assert measured and json.loads((folder / ls.JSON).read_text())["settings"]["span"] == 0.5


@pytest.mark.parametrize(
    ("change", "flag"),
    [
        ({"resolution": 4}, "--resolution 4: must be an odd number"),
        ({"resolution": 1}, "--resolution 1"),
        ({"span": 0.0}, "--span 0.0"),
        ({"span": float("nan")}, "--span nan"),
        ({"images": 5}, "--images 5"),
        ({"eigenvalues": 0}, "--eigenvalues 0"),
        ({"trace_samples": 1}, "--trace-samples 1"),
        ({"kinds": ("3d",)}, "--kind 3d"),
        ({"weights": "first"}, "--weights first"),
    ],
)
def test_bad_settings_are_refused_naming_the_flag(change, flag):
    with pytest.raises(ArchbenchError, match=flag.replace("(", r"\(")):
        ls.resolve(ls.Settings(**change), CPU)


def test_more_images_than_the_run_trained_on_is_one_clear_error(tmp_path):
    run_dir, data = _trained(tmp_path)
    images = lambda run, cfg: (data.x_train, data.y_train)  # noqa: E731
    with pytest.raises(ArchbenchError, match="--images of 500 images is not possible: the data has 60"):
        ls.measure_run(run_dir, _settings(images=500), images, CPU, print, _no_bar)


def test_a_run_without_weights_is_refused(tmp_path):
    run_dir, _ = _trained(tmp_path)
    (run_dir / "last.pt").unlink()
    with pytest.raises(ArchbenchError, match="last.pt not found: .* has no trained weights"):
        ls.load_subject(run_dir, "last", CPU)


# ---------------------------------------------------------------- end to end


@pytest.fixture
def official(tmp_path):
    folder, _ = make_official(tmp_path / "data", per_batch=24)
    return folder.parent


def test_compare_with_landscape_writes_every_file_and_the_report_judges_h3(tmp_path, official, capsys):
    out = tmp_path / "out"
    args = ["compare", "resnettiny", "plaintiny", "--seeds", "0", "1", "--epochs", "2", "--milestones", "1"]
    args += ["--batch-size", "20", "--device", "cpu", "--quiet", "--data-dir", str(official), "--no-verify-data"]
    args += ["--out", str(out)]
    assert main([*args, "--landscape"]) == 0
    printed = capsys.readouterr().out
    assert "landscape on cpu: 1d, 2d, interp, hessian; 5 points per axis" in printed
    for model in ("resnettiny", "plaintiny"):
        for seed in (0, 1):
            folder = out / model / f"seed{seed}" / "landscape"
            for name in ("landscape.npz", "landscape.json", "landscape_2d.png", "landscape_1d.png", "interp.png"):
                assert (folder / name).stat().st_size > 0, (model, seed, name)
            info = json.loads((folder / "landscape.json").read_text())
            assert len(info["hessian"]["eigenvalues"]) == 1 and info["hessian"]["trace_se"] > 0
            assert info["weights"] == "last" and info["epoch"] == 2
    shared = out / "landscape"
    for name in ("interp_seeds.png", "interp_seeds.json", "landscape_2d_shared.png", "interp_overlay.png"):
        assert (shared / name).stat().st_size > 0, name
    report = (out / "report.md").read_text()
    assert "## Landscape" in report
    assert "H3: the identity path gives a smoother, flatter solution — resnettiny vs plaintiny" in report
    assert "ln λmax (top Hessian eigenvalue)" in report and "a factor of 1.2" in report
    assert "![Training loss over the plane" in report
    assert "| resnettiny | 2 |" in report

    # the report refuses a landscape of weights the run no longer ends with
    stale = out / "plaintiny" / "seed1" / "landscape" / "landscape.json"
    info = json.loads(stale.read_text())
    stale.write_text(json.dumps({**info, "epoch": 1}))
    assert main(["report", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "measured the last weights of epoch 1, but the run's last weights are now" in err
    assert "run archbench landscape" in err


def test_landscape_cli_refuses_bad_input_in_one_line(tmp_path, capsys):
    run_dir, _ = _trained(tmp_path)
    assert main(["landscape", str(tmp_path / "nowhere"), "--device", "cpu"]) == 1
    assert "no history files here or in its sub-folders" in capsys.readouterr().err
    assert main(["landscape", str(run_dir), "--resolution", "4", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "archbench: error: --resolution 4: must be an odd number ≥ 3"
    assert not (run_dir / "landscape").exists()


def test_a_point_whose_loss_blows_up_is_kept_as_inf_and_not_measured_again(tmp_path):
    calls = []

    def measure(i):
        calls.append(i)
        return (float("nan"), 0.0) if i == (1,) else (float(i[0]), 50.0)

    grids = ls.Grids(tmp_path / "p.npz", "k", print)
    loss, _ = grids.fill("1d", (3,), measure, _no_bar)
    assert loss.tolist() == [0.0, np.inf, 2.0] and len(calls) == 3
    again = ls.Grids(tmp_path / "p.npz", "k", print)
    loss, _ = again.fill("1d", (3,), measure, _no_bar)
    assert len(calls) == 3 and np.isinf(loss[1])
    other = ls.Grids(tmp_path / "p.npz", "another key", print)  # other settings or weights: measured anew
    other.fill("1d", (3,), measure, _no_bar)
    assert len(calls) == 6
