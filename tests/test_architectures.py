"""Backbones: arch-name words, frozen BatchNorm, normalization, pooling, weight loading errors."""
import urllib.error

import pytest
import torch

import architectures
from architectures import PretrainedWeightsError, parse_arch
from utilities.registry import UnknownNameError

PAPER_ARCH = "bninception_double_frozen_normalize_multiSim_300epoch_200_250_embeddingProducer_DAS_numScale8"  # noqa: E501


def test_paper_arch_name_is_parsed_into_backbone_and_option_words():
    spec = parse_arch(PAPER_ARCH)
    assert spec.backbone == "bninception"
    assert spec.double and spec.frozen and spec.normalize
    spec = parse_arch("resnet50_frozen_normalize")
    assert spec.backbone == "resnet50" and not spec.double


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(UnknownNameError) as error:
        parse_arch("vgg16_frozen")
    message = str(error.value)
    for name in ("resnet50", "bninception", "googlenet", "resnet18"):
        assert name in message


@pytest.mark.parametrize("name,swapped", [
    ("resnet50_frozen_normalize_double", "tinycnn_frozen_normalize_double"),
    ("resnet50", "tinycnn"),
    # the longest registered prefix is the backbone: resnet18, not a "resnet" plus a word "18"
    ("resnet18_bn_norm_run_7", "tinycnn_bn_norm_run_7"),
    (PAPER_ARCH, "tinycnn" + PAPER_ARCH[len("bninception"):]),
])
def test_with_backbone_swaps_the_backbone_and_keeps_the_rest_as_written(name, swapped):
    assert architectures.with_backbone(name, "tinycnn") == swapped
    assert parse_arch(swapped).words == parse_arch(name).words


def test_with_backbone_refuses_an_unknown_backbone_like_parse_arch():
    with pytest.raises(UnknownNameError, match="unknown backbone in --arch 'vgg16_frozen'"):
        architectures.with_backbone("vgg16_frozen", "tinycnn")


@pytest.mark.parametrize("name,size", [("resnet18_normalize", 64), ("googlenet_normalize", 96),
                                       (PAPER_ARCH, 96), ("resnet50_double_frozen_normalize", 64)])
def test_every_backbone_gives_unit_norm_embeddings_of_the_asked_size(name, size):
    torch.manual_seed(0)
    model = architectures.select(name, embed_dim=24, pretrained=False).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 24)
    assert torch.allclose(out.norm(dim=1), torch.ones(2), atol=1e-5)


def test_frozen_batchnorm_keeps_statistics_and_affine_terms_fixed():
    """--frozen_bn_affine; the published default (affine terms train) is in test_parity_training."""
    torch.manual_seed(0)
    model = architectures.select("resnet18_frozen_normalize", 16, pretrained=False,
                                 freeze_bn_affine=True)
    model.train()
    batchnorms = list(model.batchnorm_layers())
    assert batchnorms and all(not bn.training for bn in batchnorms)
    assert all(not p.requires_grad for bn in batchnorms for p in bn.parameters())
    before = batchnorms[0].running_mean.clone()
    model(torch.randn(4, 3, 32, 32) * 5 + 3).sum().backward()
    assert torch.equal(before, batchnorms[0].running_mean)
    assert model.last_linear.weight.grad is not None


def test_unfrozen_batchnorm_trains_and_unnormalized_output_is_free():
    torch.manual_seed(0)
    model = architectures.select("resnet18", 16, pretrained=False).train()
    assert all(bn.training for bn in model.batchnorm_layers())
    out = model(torch.randn(4, 3, 32, 32))
    assert not torch.allclose(out.norm(dim=1), torch.ones(4))


def test_double_pooling_adds_max_pooling():
    torch.manual_seed(0)
    single = architectures.select("resnet18", 8, pretrained=False).eval()
    double = architectures.select("resnet18_double", 8, pretrained=False).eval()
    double.load_state_dict(single.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feature_map = single.features(x)
        expected = single.last_linear(feature_map.mean((2, 3)) + feature_map.amax((2, 3)))
        assert torch.allclose(double(x), expected, atol=1e-5)
        assert not torch.allclose(single(x), double(x))


def test_bninception_takes_bgr_0_255_input_with_mean_subtraction_only():
    """(std 0.9945: the published code's 0.0039 on the 0-1 scale; see test_parity_training.)"""
    model = architectures.select("bninception_normalize", 8, pretrained=False)
    config = model.transform_config(224, "base")
    assert config.bgr_255 and tuple(config.std) == pytest.approx((0.9945,) * 3)
    assert config.mean[0] > 1
    resnet_config = architectures.select("resnet18", 8, pretrained=False).transform_config(64, "base")  # noqa: E501
    assert not resnet_config.bgr_255 and resnet_config.std[0] < 1


def test_missing_imagenet_weights_stop_with_where_to_put_them(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("network unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(PretrainedWeightsError) as error:
        architectures.select("resnet50_frozen_normalize", 8, pretrained=True)
    message = str(error.value)
    assert str(tmp_path) in message and "resnet50" in message
    assert "--not_pretrained" in message and "--pretrained_path" in message


def test_pretrained_path_loads_a_local_state_dict(tmp_path):
    torch.manual_seed(1)
    from torchvision.models import resnet18

    reference = resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(reference.state_dict(), path)
    model = architectures.select("resnet18_frozen", 8, pretrained=False, pretrained_path=str(path))
    assert torch.equal(model.features[0].weight, reference.conv1.weight)
    assert torch.equal(model.features[4][0].bn1.running_var, reference.layer1[0].bn1.running_var)


def test_pretrained_path_of_another_backbone_is_refused(tmp_path):
    from torchvision.models import resnet18

    path = tmp_path / "r18.pth"
    torch.save(resnet18(weights=None).state_dict(), path)
    with pytest.raises(PretrainedWeightsError, match="do not fit backbone 'resnet50'"):
        architectures.select("resnet50", 8, pretrained=False, pretrained_path=str(path))
    with pytest.raises(PretrainedWeightsError, match="is not a file"):
        architectures.select("resnet18", 8, pretrained=False, pretrained_path=str(tmp_path / "none"))  # noqa: E501
