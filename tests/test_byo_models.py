"""Models from outside the package: a file, a module path, an entry point and timm, put through
the protocol beside the built-ins; every bad spec refused in one line before any work."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest
import torch

from archbench.analysis.verdicts import pairs
from archbench.cli import main
from archbench.errors import ArchbenchError
from archbench.models import specs
from conftest import SAMPLE_DIR, needs_sample
from test_cli import archbench

SMALL = ["--train-subset", "40", "--test-subset", "20", "--batch-size", "20", "--device", "cpu", "--quiet"]

# A user's model file: a small CNN, with its metadata set as plain attributes (no archbench import).
USER_FILE = '''
import torch.nn as nn


def cnn(num_classes=10):
    """A two-conv CNN of the user's own."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(4),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes),
    )


cnn.default_lr = 0.05


def cnn_plain(num_classes=10):
    return cnn(num_classes)


cnn_plain.plain_twin_of = "cnn"
'''

# Bad factories, one per way of being wrong.
BAD_FILE = """
import torch
import torch.nn as nn

not_a_function = 3


def raises(num_classes=10):
    raise ValueError("no such width")


def no_module(num_classes=10):
    return "a string"


def wrong_shape(num_classes=10):
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 7))


def no_num_classes():
    return nn.Linear(1, 1)


_SHARED = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))


def shared(num_classes=10):
    return _SHARED


def seeded(num_classes=10):
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, num_classes))


def numpy_init(num_classes=10):
    import numpy as np

    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, num_classes))
    with torch.no_grad():
        net[1].weight.copy_(torch.from_numpy(np.random.randn(num_classes, 3 * 32 * 32)))
    return net


def aux_in_training(num_classes=10):
    class Aux(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3 * 32 * 32, num_classes)

        def forward(self, x):
            logits = self.fc(x.flatten(1))
            return (logits, logits) if self.training else logits

    return Aux()


def float64(num_classes=10):
    torch.set_default_dtype(torch.float64)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, num_classes))


def lazy(num_classes=10):
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))


def tuple_out(num_classes=10):
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3 * 32 * 32, num_classes)

        def forward(self, x):
            return self.fc(x.flatten(1)), x

    return Two()
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def fake_installed_package(site: Path) -> None:
    """A package on ``site`` that declares one model in the ``archbench.models`` entry-point group,
    installed as pip would leave it (a .dist-info folder), so importlib.metadata finds it."""
    write(
        site / "zoo_pkg" / "__init__.py",
        "import torch.nn as nn\n\n\ndef linear(num_classes=10):\n    return nn.Sequential(nn.Flatten(), "
        "nn.Linear(3 * 32 * 32, num_classes))\n\n\nlinear.description = 'a linear classifier from zoo_pkg'\n",
    )
    dist = site / "zoo_pkg-1.2.dist-info"
    write(dist / "METADATA", "Metadata-Version: 2.1\nName: zoo-pkg\nVersion: 1.2\n")
    write(dist / "entry_points.txt", "[archbench.models]\nzoolinear = zoo_pkg:linear\n")
    write(dist / "RECORD", "")


@pytest.fixture
def user_models(tmp_path, monkeypatch):
    """The user's file, a module on PYTHONPATH and an installed entry point, for this process and
    for the CLI in a subprocess."""
    model_file = write(tmp_path / "mine" / "my_models.py", USER_FILE)
    write(tmp_path / "pkgs" / "labnets" / "__init__.py", "")
    write(tmp_path / "pkgs" / "labnets" / "small.py", USER_FILE.replace("cnn", "tiny_cnn"))
    fake_installed_package(tmp_path / "site")
    paths = [str(tmp_path / "pkgs"), str(tmp_path / "site")]
    for p in paths:
        monkeypatch.syspath_prepend(p)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([*paths, os.environ.get("PYTHONPATH", "")]))
    return model_file


@needs_sample
@pytest.mark.slow
def test_file_module_and_entry_point_models_go_through_compare_and_report(user_models, tmp_path):
    out = tmp_path / "out"
    file_spec = f"{user_models}:cnn"
    p = archbench(
        "compare",
        file_spec,
        "labnets.small:tiny_cnn",
        "zoolinear",
        "--epochs",
        "1",
        "--data-dir",
        SAMPLE_DIR,
        "--out",
        out,
        *SMALL,
        cwd=tmp_path,
    )
    table = (out / "comparison.md").read_text()
    for name in ("cnn", "tiny_cnn", "zoolinear"):
        assert f"| {name} " in table, table
        assert (out / name / "best.pt").is_file()
    report = (out / "report.md").read_text()
    assert "cnn" in report and "tiny_cnn" in report and "zoolinear" in report
    assert "Δ final accuracy (cnn − tiny_cnn)" in p.stdout

    config = json.loads((out / "cnn" / "config.json").read_text())
    assert (config["model"], config["model_spec"], config["lr"]) == ("cnn", file_spec, 0.05)  # the factory's lr
    record = json.loads((out / "cnn" / "model.json").read_text())
    assert record["source"]["kind"] == "file" and record["source"]["file"] == str(user_models)
    assert record["source"]["sha256"] == __import__("hashlib").sha256(user_models.read_bytes()).hexdigest()
    assert record["description"] == "A two-conv CNN of the user's own."
    module_record = json.loads((out / "tiny_cnn" / "model.json").read_text())["source"]
    assert module_record["kind"] == "module" and module_record["spec"] == "labnets.small:tiny_cnn"
    ep = json.loads((out / "zoolinear" / "model.json").read_text())
    assert ep["source"]["kind"] == "entry-point" and ep["source"]["package"] == "zoo-pkg 1.2"
    assert ep["description"] == "a linear classifier from zoo_pkg"


def test_models_lists_entry_points_and_describes_named_specs(user_models, capsys):
    assert main(["models"]) == 0
    listed = capsys.readouterr().out
    assert "resnet18" in listed and "zoolinear" in listed and "a linear classifier from zoo_pkg" in listed
    assert main(["models", f"{user_models}:cnn_plain", "--dataset", "cifar100"]) == 0
    shown = capsys.readouterr().out
    assert "cnn_plain" in shown and "[plain twin of cnn]" in shown and f"file: {user_models}:cnn_plain" in shown
    params_10 = specs.resolve("cnn", f"{user_models}:cnn").build(num_classes=10)
    params_100 = specs.resolve("cnn", f"{user_models}:cnn").build(num_classes=100)
    assert sum(p.numel() for p in params_100.parameters()) - sum(p.numel() for p in params_10.parameters()) == 90 * 17


def test_a_relative_file_spec_is_recorded_as_an_absolute_path(user_models, monkeypatch):
    monkeypatch.chdir(user_models.parent.parent)
    name, spec = specs.parse("mine/my_models.py:cnn")
    assert (name, spec) == ("cnn", f"{user_models}:cnn")


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    "spec,expected",
    [
        ("nosuchpackage_xyz.nets:f", "no module named 'nosuchpackage_xyz'; install it or add its folder to PYTHONPATH"),
        ("labnets.small:nothere", "labnets.small has no 'nothere' (it has: "),
        ("BAD:nothere", "bad_models.py has no 'nothere' (it has: "),
        ("BAD:not_a_function", "'not_a_function' is of type int, not a function"),
        ("BAD:shared", "returned the same network (or parameters) twice"),
        ("BAD:numpy_init", "two builds under the same torch seed have different initial weights"),
        ("BAD:aux_in_training", "gave a tuple in training mode, expected (2, 10) logits"),
        ("BAD:float64", "changed torch's default dtype to torch.float64"),
        ("BAD:tuple_out", "gave a tuple in training mode, expected (2, 10) logits"),
        ("BAD:lazy", "it has lazy layers (nn.LazyLinear, nn.LazyConv2d, ...)"),
        ("FOLDER:f", "is a folder; name a .py file in it"),
        ("BAD", "to use a function in that file, write"),
        ("BAD:raises", "raised ValueError: no such width; fix the model's code"),
        ("BAD:no_module", "its factory returned a str, not a torch.nn.Module"),
        ("BAD:wrong_shape", "gave shape (2, 7) in training mode, expected (2, 10) logits"),
        ("BAD:no_num_classes", "raised TypeError: "),
        ("missing_file.py:f", "missing_file.py not found; check the path"),
        ("labnets.small:bad-name", "is not a Python function name"),
        ("resnet99", "unknown model 'resnet99'; available: resnet18"),
        ("BROKEN:f", "raised SyntaxError"),
        ("BAD:resnet18", "would be filed as 'resnet18', the name of a registered model"),
    ],
)
def test_every_bad_spec_is_one_line_before_any_folder_is_made(user_models, tmp_path, capsys, spec, expected):
    bad = write(tmp_path / "bad_models.py", BAD_FILE)
    broken = write(tmp_path / "broken.py", "def f(num_classes=10)\n    return None\n")
    spec = spec.replace("BAD", str(bad)).replace("BROKEN", str(broken)).replace("FOLDER", str(tmp_path))
    out = tmp_path / "out"
    err = _one_line_error(capsys, ["train", spec, "--out", str(out), "--epochs", "1", *SMALL])
    assert expected in err, err
    assert not out.exists()  # nothing was made: the model was refused before the data or any folder
    assert torch.get_default_dtype() == torch.float32  # a factory's change of it is undone


def test_a_bad_spec_in_compare_stops_before_the_first_model_trains(user_models, tmp_path, capsys):
    bad = write(tmp_path / "bad_models.py", BAD_FILE)
    out = tmp_path / "out"
    err = _one_line_error(capsys, ["compare", "resnet18", f"{bad}:wrong_shape", "--out", str(out), *SMALL])
    assert "expected (2, 10) logits" in err and not out.exists()


def test_two_specs_filed_under_one_name_are_refused(user_models, tmp_path, capsys):
    other = write(tmp_path / "other" / "my_models.py", USER_FILE)
    err = _one_line_error(capsys, ["compare", f"{user_models}:cnn", f"{other}:cnn", "--out", str(tmp_path / "o")])
    assert "are both filed as 'cnn'" in err


@needs_sample
def test_resume_refuses_a_changed_model_file_and_keeps_the_run(user_models, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["train", f"{user_models}:cnn", "--data-dir", str(SAMPLE_DIR), "--out", str(out), *SMALL]
    assert main([*argv, "--epochs", "1"]) == 0
    before = {p.name: p.read_bytes() for p in (out / "cnn").iterdir() if p.is_file()}
    user_models.write_text(user_models.read_text().replace("nn.ReLU()", "nn.GELU()"))
    capsys.readouterr()
    err = _one_line_error(capsys, [*argv, "--epochs", "2", "--resume"])
    assert "was trained with another definition of model 'cnn'" in err and "has changed (SHA-256" in err
    assert {p.name: p.read_bytes() for p in (out / "cnn").iterdir() if p.is_file()} == before


def test_names_of_models_from_outside_the_package_are_not_read_as_resnets_or_plain_nets():
    assert pairs(["resnet18", "resnet_se", "plain_cnn"], user={"resnet_se", "plain_cnn"}) == [
        ("resnet18", "resnet_se", False),
        ("resnet18", "plain_cnn", False),
    ]


def test_a_declared_plain_twin_is_paired_with_its_residual_model():
    # A model another one declares as its residual counterpart gets the resnet's verdicts against its twin.
    assert pairs(["resnet18", "cnn", "cnn_plain", "vgg19_bn"], {"cnn_plain": "cnn"}) == [
        ("resnet18", "vgg19_bn", False),
        ("cnn", "cnn_plain", True),
        ("cnn", "vgg19_bn", False),
    ]
    # Built-ins keep their rule: a plain net of another depth is no control.
    assert pairs(["resnet34", "plain18"]) == []


def test_the_check_leaves_the_global_rng_alone(user_models):
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    specs.check(specs.resolve("cnn", f"{user_models}:cnn"), 10)
    assert torch.equal(torch.rand(3), expected)


def test_timm_models_are_built_with_the_datasets_class_count():
    timm = pytest.importorskip("timm", reason="timm is not installed (pip install 'archbench[timm]')")
    name, spec = specs.parse("timm:resnet18")
    assert (name, spec) == ("timm-resnet18", "timm:resnet18")
    model = specs.resolve(name, spec)
    assert model.source.package == f"timm {timm.__version__}"
    specs.check(model, 100)  # builds, classifies a (2, 3, 32, 32) batch into 100 logits
    with pytest.raises(ArchbenchError, match="timm .* has no such model"):
        specs.resolve("timm-nosuchnet", "timm:nosuchnet")


def test_without_timm_a_timm_spec_says_how_to_install_it(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now fails, as where it is not installed
    with pytest.raises(ArchbenchError, match=r"needs timm, which is not installed; pip install 'archbench\[timm\]'"):
        specs.resolve("timm-resnet18", "timm:resnet18")


def test_the_readme_example_is_the_file_and_builds_a_classifier():
    from conftest import REPO

    example = REPO / "examples" / "se_resnet18.py"
    readme = (REPO / "README.md").read_text()
    assert example.read_text().strip() in readme  # the README shows the file as it is
    assert "archbench compare resnet18 plain18 examples/se_resnet18.py:se_resnet18 --seeds 0 1 2" in readme
    model = specs.resolve(*specs.parse(f"{example}:se_resnet18"))
    assert model.description == "CIFAR ResNet-18 with a squeeze-and-excitation gate after every block (r=16)"
    specs.check(model, 100)


def test_a_class_is_a_factory_and_its_description_is_its_own(tmp_path):
    f = write(
        tmp_path / "cls.py",
        "import torch.nn as nn\n\n\nclass Net(nn.Sequential):\n    def __init__(self, "
        "num_classes=10):\n        super().__init__(nn.Flatten(), nn.Linear(3 * 32 * 32, num_classes))\n",
    )
    model = specs.resolve(*specs.parse(f"{f}:Net"))
    specs.check(model, 10)
    assert model.description == f"file model {f}:Net"  # not nn.Module's docstring


def test_a_module_spec_records_the_file_that_defines_the_factory(tmp_path, monkeypatch):
    write(tmp_path / "pkgs" / "mylab" / "__init__.py", "from mylab.nets import small\n")
    nets = write(tmp_path / "pkgs" / "mylab" / "nets.py", USER_FILE.replace("cnn", "small"))
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))
    source = specs.resolve(*specs.parse("mylab:small")).source
    assert (source.file, source.sha256) == (str(nets), __import__("hashlib").sha256(nets.read_bytes()).hexdigest())


def test_a_model_file_named_in_a_config_file_is_found_beside_it(user_models, tmp_path, monkeypatch):
    from archbench.config import from_mapping, load_file

    cfg_file = write(user_models.parent / "exp.toml", 'model = "my_models.py:cnn"\nepochs = 1\n')
    monkeypatch.chdir(tmp_path)  # elsewhere: the path is the config file's, not the working folder's
    cfg = from_mapping(load_file(cfg_file))
    assert (cfg.model, cfg.model_spec) == ("cnn", f"{user_models}:cnn")


def test_models_lists_a_broken_installed_model_and_goes_on(user_models, tmp_path, capsys):
    dist = tmp_path / "site" / "broken_pkg-0.1.dist-info"
    write(dist / "METADATA", "Metadata-Version: 2.1\nName: broken-pkg\nVersion: 0.1\n")
    write(dist / "entry_points.txt", "[archbench.models]\nbrokennet = no_such_module_xyz:f\n")
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "zoolinear" in out and "resnet18" in out
    assert "brokennet" in out and "cannot be used" in out and "reinstall or update broken-pkg 0.1" in out


@needs_sample
def test_a_finished_run_follows_its_model_file_when_it_moves(user_models, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--data-dir", str(SAMPLE_DIR), "--out", str(out), "--epochs", "1", *SMALL]
    assert main(["compare", f"{user_models}:cnn", *argv]) == 0
    moved = user_models.parent.parent / "moved"
    user_models.parent.rename(moved)
    capsys.readouterr()
    assert main(["compare", f"{moved / user_models.name}:cnn", *argv]) == 0  # reused, then evaluated again
    assert "the run's model file is now" in capsys.readouterr().out
    assert json.loads((out / "cnn" / "config.json").read_text())["model_spec"] == f"{moved / user_models.name}:cnn"


def test_weights_that_ignore_the_seed_are_allowed_with_a_note(tmp_path):
    bad = write(tmp_path / "bad_models.py", BAD_FILE)
    notes = specs.check(specs.resolve(*specs.parse(f"{bad}:seeded")), 10)
    assert len(notes) == 1 and "initial weights do not depend on --seed" in notes[0]


def test_a_model_file_imports_what_lies_beside_it_from_any_folder(tmp_path, monkeypatch):
    write(
        tmp_path / "lib" / "blocks_xyz.py",
        "import torch.nn as nn\n\n\ndef head(n):\n    return nn.Linear(3 * 32 * 32, n)\n",
    )
    net = write(
        tmp_path / "lib" / "net.py",
        "import torch.nn as nn\nfrom blocks_xyz import head\n\n\ndef sib(num_classes=10):\n"
        "    return nn.Sequential(nn.Flatten(), head(num_classes))\n",
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", list(__import__("sys").path))  # the folder added is this test's alone
    specs.check(specs.resolve(*specs.parse(f"{net}:sib")), 10)


def test_compare_refuses_a_config_files_model_instead_of_training_the_default_pair(user_models, tmp_path, capsys):
    cfg_file = write(user_models.parent / "exp.toml", 'model = "my_models.py:cnn"\n')
    err = _one_line_error(capsys, ["compare", "--config", str(cfg_file), "--out", str(tmp_path / "o")])
    assert "sets model, but compare takes its models on the command line" in err
    assert not (tmp_path / "o").exists()
