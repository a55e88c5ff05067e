"""Model registry: shapes, exact parameter counts, architecture and init per SPEC.md."""

import math

import pytest
import torch
import torch.nn as nn

from archbench.errors import ArchbenchError
from archbench.models import MODELS, count_parameters, create_model
from archbench.models.resnet import BasicBlock

EXPECTED_PARAMS = {
    "resnet18": 11_173_962,
    "vgg19_bn": 38_958_922,
    "vgg19": 38_947_914,
    "plain18": 11_000_138,
    "resnet34": 21_282_122,
    "plain34": 21_108_298,
}


@pytest.mark.parametrize("name", list(MODELS))
def test_every_registered_model_maps_cifar_images_to_ten_logits(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", list(MODELS))
def test_parameter_counts_are_exact(name):
    assert name in EXPECTED_PARAMS, f"add the expected parameter count of {name}"
    assert count_parameters(create_model(name)) == EXPECTED_PARAMS[name]


def test_default_learning_rates():
    assert MODELS["resnet18"].default_lr == 0.1
    assert MODELS["vgg19_bn"].default_lr == 0.1
    assert MODELS["vgg19"].default_lr == 0.01


def test_unknown_model_is_a_clear_error():
    with pytest.raises(ArchbenchError, match="unknown model 'resnet99'.*resnet18"):
        create_model("resnet99")


def test_resnet18_is_the_cifar_variant():
    m = create_model("resnet18")
    assert not any(isinstance(x, nn.MaxPool2d) for x in m.modules())
    stem = m.stem[0]
    assert (stem.kernel_size, stem.stride, stem.in_channels, stem.out_channels) == ((3, 3), (1, 1), 3, 64)
    blocks = [b for b in m.modules() if isinstance(b, BasicBlock)]
    assert len(blocks) == 8
    # Only the first block of stages 2-4 downsamples and projects; the rest are identity.
    projecting = [i for i, b in enumerate(blocks) if not isinstance(b.shortcut, nn.Identity)]
    assert projecting == [2, 4, 6]
    assert [b.conv1.stride[0] for b in blocks] == [1, 1, 2, 1, 2, 1, 2, 1]
    assert all(c.bias is None for c in m.modules() if isinstance(c, nn.Conv2d))
    assert m.fc.in_features == 512 and m.fc.out_features == 10
    feats = {}
    m.layer4.register_forward_hook(lambda mod, i, o: feats.update(x=o.shape))
    m.eval()(torch.zeros(1, 3, 32, 32))
    assert feats["x"] == (1, 512, 4, 4)


@pytest.mark.parametrize("plain,res", [("plain18", "resnet18"), ("plain34", "resnet34")])
def test_plain_nets_are_their_resnets_without_any_shortcut(plain, res):
    p, r = create_model(plain), create_model(res)
    assert all(b.shortcut is None for b in p.modules() if isinstance(b, BasicBlock))
    r_sd = {k: v.shape for k, v in r.state_dict().items() if ".shortcut." not in k}
    assert {k: v.shape for k, v in p.state_dict().items()} == r_sd
    # Without shortcuts the output is not x + F(x): zeroing the last BN of every block kills the signal.
    for m in (p, r):
        for b in (b for b in m.modules() if isinstance(b, BasicBlock)):
            torch.nn.init.zeros_(b.bn2.weight)
            torch.nn.init.zeros_(b.bn2.bias)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():

        def feats(m):
            return m.layer4(m.layer3(m.layer2(m.layer1(m.stem(x)))))

        assert feats(p.eval()).abs().max() == 0
        assert feats(r.eval()).abs().max() > 0


def test_resnet34_has_blocks_3_4_6_3():
    m = create_model("resnet34")
    assert [len(m.layer1), len(m.layer2), len(m.layer3), len(m.layer4)] == [3, 4, 6, 3]


def test_resnet18_init_is_kaiming_normal_fan_in_with_bn_one_zero():
    torch.manual_seed(0)
    m = create_model("resnet18")
    for conv in (c for c in m.modules() if isinstance(c, nn.Conv2d)):
        fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
        assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.15)
    for bn in (b for b in m.modules() if isinstance(b, nn.BatchNorm2d)):
        assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)


def _torchvision_cifar_vgg(batch_norm: bool) -> nn.Module:
    """torchvision's model with the study's three changes, built as the study builds it."""
    from torchvision.models import vgg19, vgg19_bn

    m = (vgg19_bn if batch_norm else vgg19)(weights=None)
    m.features[0] = nn.Conv2d(3, 64, 3, padding=1)
    m.avgpool = nn.AdaptiveAvgPool2d(1)
    m.classifier = nn.Sequential(
        nn.Linear(512, 4096),
        nn.ReLU(True),
        nn.Dropout(0.5),
        nn.Linear(4096, 4096),
        nn.ReLU(True),
        nn.Dropout(0.5),
        nn.Linear(4096, 10),
    )
    return m


@pytest.mark.parametrize("name,bn", [("vgg19_bn", True), ("vgg19", False)])
def test_vgg_matches_modified_torchvision_layout(name, bn):
    torch.manual_seed(0)
    ours = create_model(name)
    torch.manual_seed(0)
    ref = _torchvision_cifar_vgg(bn)
    ours_sd, ref_sd = ours.state_dict(), ref.state_dict()
    assert list(ours_sd) == list(ref_sd)
    assert {k: v.shape for k, v in ours_sd.items()} == {k: v.shape for k, v in ref_sd.items()}
    assert [type(x) for x in ours.features] == [type(x) for x in ref.features]
    assert [type(x) for x in ours.classifier] == [type(x) for x in ref.classifier]
    # torchvision's weights load into ours and give the same function.
    ours.load_state_dict(ref_sd)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), ref.eval()(x))


@pytest.mark.parametrize("name,bn", [("vgg19_bn", True), ("vgg19", False)])
def test_vgg_initialisation_matches_torchvision(name, bn):
    """Same init distributions layer by layer: torchvision's for kept layers, default for new ones."""
    torch.manual_seed(1)
    ours = create_model(name).state_dict()
    torch.manual_seed(2)
    ref = _torchvision_cifar_vgg(bn).state_dict()
    for key in ours:
        a, b = ours[key].float(), ref[key].float()
        if torch.all(b == b.flatten()[0]):  # constant init (BN, zero biases, running stats)
            assert torch.equal(a, b), key
            continue
        # Random init: the same distribution; small tensors give noisier estimates.
        rel = 0.12 if a.numel() >= 1000 else 0.5
        assert a.std().item() == pytest.approx(b.std().item(), rel=rel), key
        assert abs(a.mean().item()) < (0.1 if a.numel() >= 1000 else 1.0) * b.std().item(), key


def test_vgg_kept_convs_use_torchvision_fan_out_init_and_first_conv_is_fresh():
    torch.manual_seed(0)
    m = create_model("vgg19_bn")
    convs = [c for c in m.features if isinstance(c, nn.Conv2d)]
    first = convs[0]
    bound = 1 / math.sqrt(3 * 9)  # PyTorch's default Conv2d init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert first.weight.abs().max().item() <= bound
    assert first.bias.abs().max().item() <= bound and first.bias.abs().max().item() > 0
    for conv in convs[1:]:
        fan_out = conv.out_channels * 9
        assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.1)
        assert torch.all(conv.bias == 0)
