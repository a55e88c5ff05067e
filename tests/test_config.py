"""Config: the study's defaults, file and flag layering, and one clear error per bad value."""

import json

import pytest
import torch

from archbench.cli import build_parser, config_from_args
from archbench.config import FIELD_NAMES, Config, from_mapping, load_file, protocol_mismatch, resolve
from archbench.errors import ArchbenchError
from archbench.train.schedule import multistep_lr


def test_defaults_are_the_study_protocol():
    c = resolve(Config())
    assert (c.model, c.epochs, c.batch_size, c.lr, c.momentum, c.weight_decay) == ("resnet18", 100, 128, 0.1, 0.9, 5e-4)
    assert (c.milestones, c.gamma, c.pipeline, c.precision) == ((50, 75), 0.1, "fast", "fp32")
    assert resolve(Config(), "cuda").precision == "bf16"  # auto: bf16 autocast on CUDA
    assert resolve(Config(precision="fp32"), "cuda").precision == "fp32"


def test_plain_vgg19_defaults_to_lr_001_and_explicit_lr_wins():
    assert resolve(Config(model="vgg19")).lr == 0.01
    assert resolve(Config(model="vgg19", lr=0.05)).lr == 0.05


def test_config_is_frozen():
    import dataclasses

    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().epochs = 3


# At least one invalid value for every setting; the test below checks none is missed.
INVALID = [
    ("model", "resnet 99"),  # given with its spec, as a run's config.json records it: a name, checked as one
    ("model_spec", "no_colon"),
    ("dataset", "imagenet"),
    ("epochs", 0),
    ("epochs", 2.5),
    ("batch_size", 0),
    ("batch_size", -4),
    ("lr", 0),
    ("lr", -0.1),
    ("lr", "fast"),
    ("momentum", 1.0),
    ("weight_decay", -1),
    ("min_effect", -0.1),
    ("min_effect", "big"),
    ("milestones", [75, 50]),
    ("milestones", [50, 50]),
    ("milestones", [0, 10]),
    ("milestones", 50),
    ("gamma", 0),
    ("gamma", 1.5),
    ("seed", -1),
    ("seed", True),
    ("pipeline", "turbo"),
    ("workers", -1),
    ("train_subset", 0),
    ("test_subset", -5),
    ("device", "tpu"),
    ("data_dir", ""),
    ("download", "yes"),
    ("offline", "sometimes"),
    ("verify_data", 1),
    ("out", ""),
    ("quiet", "no"),
    ("precision", "fp16"),
    ("compile", "yes"),
    ("cuda_graphs", 1),
    ("val_split", 0),
    ("grad_norms_per_epoch", -1),
    ("tensorboard", "on"),
    ("mlflow", ""),
    ("mlflow", True),
    ("wandb", "yes"),
]


def test_every_setting_has_an_invalid_case():
    assert {f for f, _ in INVALID} == set(FIELD_NAMES)


@pytest.mark.parametrize("field,value", INVALID)
def test_each_invalid_value_is_one_error_naming_the_field(field, value):
    with pytest.raises(ArchbenchError) as e:
        from_mapping({field: value, **({"model_spec": None} if field == "model" else {})})
    msg = str(e.value)
    assert f"{field}=" in msg and "allowed" in msg and "\n" not in msg


def test_a_model_named_by_the_user_is_parsed_and_an_unknown_one_refused():
    assert (from_mapping({"model": "vgg19_bn"}).model, from_mapping({"model": "vgg19_bn"}).model_spec) == (
        "vgg19_bn",
        None,
    )
    assert from_mapping({"model": "timm:resnet18"}).model == "timm-resnet18"
    with pytest.raises(ArchbenchError, match="unknown model 'resnet99'; available: resnet18"):
        from_mapping({"model": "resnet99"})


def test_unknown_setting_lists_known_ones():
    with pytest.raises(ArchbenchError, match="unknown setting 'epoch'.*epochs"):
        from_mapping({"epoch": 3})


def _parse(argv):
    return build_parser().parse_args(argv)


def test_cli_beats_file_beats_defaults(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text("epochs = 7\nbatch-size = 64\nmilestones = [3, 5]\nlr = 0.05\n")
    cfg = config_from_args(_parse(["train", "resnet18", "--config", str(toml), "--epochs", "9"]))
    assert (cfg.epochs, cfg.batch_size, cfg.milestones, cfg.lr) == (9, 64, (3, 5), 0.05)
    assert cfg.momentum == 0.9  # untouched default


def test_yaml_config_and_bad_file_errors(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("epochs: 4\nweight_decay: 0.001\n")
    assert (load_file(y)["epochs"], config_from_args(_parse(["compare", "--config", str(y)])).weight_decay) == (
        4,
        0.001,
    )
    bad = tmp_path / "bad.toml"
    bad.write_text("epochs = = 3")
    with pytest.raises(ArchbenchError, match="could not be parsed"):
        load_file(bad)
    with pytest.raises(ArchbenchError, match="not found"):
        load_file(tmp_path / "missing.yaml")
    wrong = tmp_path / "c.yaml"
    wrong.write_text("epochs: 0\n")
    with pytest.raises(ArchbenchError, match="epochs=0"):
        config_from_args(_parse(["compare", "--config", str(wrong)]))


def test_protocol_mismatch_names_fields():
    saved = resolve(Config(epochs=3)).to_dict()
    assert protocol_mismatch(saved, resolve(Config(epochs=3))) == []
    diffs = protocol_mismatch(saved, resolve(Config(epochs=4, seed=1)))
    assert len(diffs) == 2 and diffs[0].startswith("epochs") and diffs[1].startswith("seed")
    # where/how settings may change between sessions
    assert protocol_mismatch(saved, resolve(Config(epochs=3, device="cpu", out="elsewhere"))) == []


def test_to_dict_round_trips_through_json():
    c = resolve(Config(milestones=(2, 4), train_subset=10))
    assert from_mapping(json.loads(json.dumps(c.to_dict()))) == c


def test_multistep_lr_matches_torch_multisteplr_stepped_per_epoch():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[50, 75], gamma=0.1)
    for epoch in range(100):
        assert multistep_lr(epoch, 0.1, (50, 75), 0.1) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
        opt.step()
        sched.step()
    assert [multistep_lr(e, 0.1, (50, 75), 0.1) for e in (0, 49, 50, 74, 75, 99)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
    )
