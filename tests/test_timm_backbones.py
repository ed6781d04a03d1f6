"""timm backbones (``--arch timm/<model>``): arch words, preprocessing, crop sizes, weights files,
layer-wise lr decay, and small models (random weights, never downloaded) trained with DAS on,
resumed, evaluated and exported like the other backbones."""
import csv
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import architectures
import main
from architectures import PretrainedWeightsError, parse_arch
from architectures.timm_backbone import TimmOptionError, TimmUnavailableError
from datasets._transforms import build_transform
from tests.fixtures import DAS_ON, torch_threads
from tools import evaluate as evaluate_tool
from tools import export as export_tool
from training.build import build_criterion, make_optimizer
from utilities import run_folder as rf
from utilities.registry import UnknownNameError

timm = pytest.importorskip("timm")  # requirements-dev.txt installs it; CI tests it

VIT = "timm/vit_tiny_patch16_224_normalize"
EMBED_DIM = 16


def run_options(source, save, arch, epochs, *extra):
    return ["--dataset", "folder", "--source", str(source), "--arch", arch, "--not_pretrained",
            "--embed_dim", str(EMBED_DIM), "--crop_size", "32", "--n_epochs", str(epochs),
            "--bs", "16", "--samples_per_class", "4", "--kernels", "0", "--lr", "1e-3",
            "--device", "cpu", "--evaluation_metrics", "recall@1", "recall@2", "map@r",
            "--save_path", str(save), *DAS_ON, *extra]


def rows(folder):
    """metrics.csv without the wall-clock column."""
    with open(Path(folder) / rf.METRICS_FILE, newline="") as handle:
        return [{k: v for k, v in r.items() if k != "epoch_time_s"} for r in csv.DictReader(handle)]


def network_state(folder):
    return torch.load(Path(folder) / rf.LAST_CHECKPOINT, weights_only=True)["network"]["state_dict"]


@pytest.fixture(scope="module")
def vit_runs(generated_folder, tmp_path_factory):
    """ViT-tiny at a 32-pixel crop (2x2 patches), DAS on, --layer_decay: 2 epochs in one go, and
    1 epoch resumed to 2 (one process, one thread: exact equality holds)."""
    save = tmp_path_factory.mktemp("timm_vit")
    with torch_threads(1):
        full = main.main(run_options(generated_folder, save, VIT, 2, "--layer_decay", "0.7",
                                         "--savename", "full"))
        part = main.main(run_options(generated_folder, save, VIT, 1, "--layer_decay", "0.7",
                                         "--savename", "part"))
        main.main(["--resume", part, "--n_epochs", "2"])
    return Path(full), Path(part)


def test_vit_trains_with_das_and_resumes_exactly(vit_runs):
    full, resumed = vit_runs
    history = rows(full)
    assert [r["epoch"] for r in history] == ["1", "2"]
    assert float(history[-1]["stats/das/real_generated_distance"]) > 0  # DAS generated rows
    assert history == rows(resumed)  # same process and thread count: bit-identical
    expected, got = network_state(full), network_state(resumed)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert any(k.startswith("features.model.blocks.") for k in expected)


def test_evaluate_reproduces_the_metrics_csv_row(vit_runs, capsys):
    full, _ = vit_runs
    capsys.readouterr()
    with torch_threads(1):
        assert evaluate_tool.main([str(full), "--device", "cpu"]) == 0
    printed = dict(line.split("=", 1) for line in capsys.readouterr().out.splitlines()
                   if "=" in line)
    expected = {k: v for k, v in rows(full)[-1].items() if k.startswith("test/")}
    assert len(expected) == 3 and printed == expected


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_of_a_vit_matches_pytorch(vit_runs, tmp_path, fmt):
    full, _ = vit_runs
    out = tmp_path / f"vit.{'onnx' if fmt == 'onnx' else 'pt'}"
    assert export_tool.main([str(full), "--format", fmt, "--out", str(out)]) == 0
    description = json.loads(Path(str(out) + ".json").read_text())
    assert description["input"]["shape"] == ["batch", 3, 32, 32]
    assert description["input"]["mean"] == [0.5, 0.5, 0.5]  # timm's config of this ViT
    assert description["check"]["max_abs_difference"] <= export_tool.TOLERANCE


@pytest.mark.parametrize("arch,fmt", [("timm/convnext_atto_double_normalize", "onnx"),
                                      ("timm/resnet18_frozen_normalize", None)])
def test_cnns_train_with_das_and_evaluate(generated_folder, tmp_path, capsys, arch, fmt):
    with torch_threads(1):
        folder = main.main(run_options(generated_folder, tmp_path, arch, 1))
        capsys.readouterr()
        assert evaluate_tool.main([folder, "--device", "cpu"]) == 0
    printed = dict(line.split("=", 1) for line in capsys.readouterr().out.splitlines()
                   if "=" in line)
    assert printed == {k: v for k, v in rows(folder)[-1].items() if k.startswith("test/")}
    if fmt:
        assert export_tool.main([folder, "--format", fmt, "--out", str(tmp_path / "m.onnx")]) == 0


# ----------------------------------------------------------------------------- names and words
def test_timm_names_parse_into_model_tag_and_words():
    spec = parse_arch("timm/vit_small_patch16_224.dino_frozenx_normalize_run1")
    assert (spec.backbone, spec.model) == ("timm", "vit_small_patch16_224.dino")
    assert spec.normalize and not spec.frozen and "run1" in spec.words
    assert parse_arch("timm/resnet18_frozen_double").model == "resnet18"  # not a "resnet" + "18"
    assert architectures.with_backbone("timm/convnext_atto_normalize_x", "tinycnn") == \
        "tinycnn_normalize_x"
    # a pretrained tag changes the weights, not their layout
    assert architectures.same_weight_layout("timm/vit_small_patch16_224.dino_normalize",
                                            "timm/vit_small_patch16_224_normalize")
    assert not architectures.same_weight_layout(VIT, "timm/vit_small_patch16_224_normalize")


def test_unknown_timm_model_or_tag_says_how_to_find_names():
    with pytest.raises(UnknownNameError) as error:
        parse_arch("timm/vit_smal_patch16_224_normalize")
    message = str(error.value)
    assert "vit_small_patch16_224" in message and "timm.list_models(" in message
    with pytest.raises(UnknownNameError, match="has the tags .*dino"):
        parse_arch("timm/vit_small_patch16_224.nosuchtag")
    with pytest.raises(UnknownNameError, match=r"timm/<timm model name>"):
        parse_arch("timm_vit_small_patch16_224")


def test_without_timm_the_run_stops_with_the_install_command(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    with pytest.raises(TimmUnavailableError, match=r"pip install 'timm=="):
        parse_arch(VIT)
    assert main.run(["--arch", VIT, "--n_epochs", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install" in err and "Traceback" not in err


def test_frozen_needs_batchnorm_and_double_needs_a_feature_map():
    with pytest.raises(TimmOptionError, match="'frozen' freezes BatchNorm .* no BatchNorm"):
        architectures.select("timm/convnext_atto_frozen", 8, pretrained=False)
    with pytest.raises(TimmOptionError, match="'double' pools a CNN feature map"):
        architectures.select("timm/vit_tiny_patch16_224_double", 8, pretrained=False)
    model = architectures.select("timm/resnet18_frozen_double", 8, pretrained=False).train()
    batchnorms = list(model.batchnorm_layers())
    assert batchnorms and not any(bn.training for bn in batchnorms)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        fmap = model.features(model.input_normalizer(x))
        assert fmap.shape[-2:] == (2, 2)  # the map itself, pooled by EmbeddingNetwork
        expected = model.last_linear(fmap.mean((2, 3)) + fmap.amax((2, 3)))
        assert torch.allclose(model(x), expected, atol=1e-5)


def test_preprocessing_and_crop_sizes_follow_the_timm_config(capsys):
    vit = architectures.select(VIT, 8, pretrained=False)
    config = vit.transform_config(64, "base")
    assert tuple(config.mean) == (0.5, 0.5, 0.5) and tuple(config.std) == (0.5, 0.5, 0.5)
    assert vit.interpolation == "bicubic" and vit.native_size == 224
    assert config.interpolation == "bicubic"  # the model's resize, used by the transforms:
    image = torch.randint(0, 256, (3, 80, 100), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(0))
    bicubic = build_transform(config, train=False)(image)
    bilinear = build_transform(dataclasses.replace(config, interpolation="bilinear"),
                               train=False)(image)
    assert bicubic.shape == bilinear.shape == (3, 64, 64) and not torch.equal(bicubic, bilinear)
    resnet = architectures.select("resnet18_normalize", 8, pretrained=False)
    assert resnet.transform_config(64, "base").interpolation == "bilinear"
    with torch.no_grad():  # position embeddings follow the patch grid of the input
        assert vit(torch.randn(1, 3, 64, 64)).shape == vit(torch.randn(1, 3, 96, 96)).shape
    with pytest.raises(TimmOptionError, match="--crop_size 40 .* multiple of its patch size 16"):
        vit.transform_config(40, "base")
    fixed = architectures.select("timm/efficientvit_m0", 8, pretrained=False)
    assert fixed.transform_config(224, "base").crop_size == 224
    with pytest.raises(TimmOptionError, match="takes only its native size 224"):
        fixed.transform_config(64, "base")
    convnext = architectures.select("timm/convnext_atto", 8, pretrained=False)
    assert tuple(convnext.transform_config(48, "base").mean) == pytest.approx((0.485, 0.456, 0.406))


def test_an_unsupported_crop_stops_main_at_start_up(generated_folder, tmp_path, capsys):
    options = run_options(generated_folder, tmp_path, VIT, 1)
    options[options.index("--crop_size") + 1] = "40"
    assert main.run(options) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "multiple of its patch size 16" in err


# ----------------------------------------------------------------------------- weights
@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_a_saved_state_dict_through_pretrained_path_gives_the_same_embeddings(tmp_path, suffix):
    torch.manual_seed(3)
    # a timm checkpoint as timm or a hub page gives it: the whole model, ImageNet head included
    reference = timm.create_model("vit_tiny_patch16_224", num_classes=1000)
    path = str(tmp_path / f"vit{suffix}")
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(reference.state_dict(), path)
    else:
        torch.save(reference.state_dict(), path)
    torch.manual_seed(0)
    source = architectures.select(VIT, 8, pretrained=False)
    source.features.model.load_state_dict(reference.state_dict(), strict=False)
    loaded = architectures.select(VIT, 8, pretrained=False, pretrained_path=path)
    loaded.last_linear.load_state_dict(source.last_linear.state_dict())
    images = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(source.eval()(images), loaded.eval()(images))


def test_missing_or_mismatched_weights_files_stop_with_one_line(tmp_path):
    with pytest.raises(PretrainedWeightsError, match="is not a file"):
        architectures.select(VIT, 8, pretrained=False, pretrained_path=str(tmp_path / "x.pth"))
    with pytest.raises(PretrainedWeightsError, match="is not a file"):
        architectures.select(VIT, 8, pretrained=False,
                             pretrained_path=str(tmp_path / "x.safetensors"))
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    with pytest.raises(PretrainedWeightsError, match="is not a checkpoint"):
        architectures.select(VIT, 8, pretrained=False, pretrained_path=str(broken))
    other = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18").state_dict(), other)
    with pytest.raises(PretrainedWeightsError) as error:
        architectures.select("timm/convnext_atto", 8, pretrained=False, pretrained_path=str(other))
    message = str(error.value)
    assert "do not fit backbone 'timm/convnext_atto'" in message and "\n" not in message


def test_offline_pretrained_weights_say_where_to_get_them(monkeypatch):
    import timm.models._builder as builder

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' (offline)")

    monkeypatch.setattr(builder, "load_pretrained", offline)  # nothing is downloaded
    with pytest.raises(PretrainedWeightsError) as error:
        architectures.select(VIT, 8, pretrained=True)
    message = str(error.value)
    assert "huggingface.co/timm/vit_tiny_patch16_224." in message
    assert "--pretrained_path" in message and "--not_pretrained" in message


# ----------------------------------------------------------------------------- optimizer
def test_layer_decay_scales_each_layer_and_covers_the_backbone_once():
    from parameters import build_parser, resolve_dataset_defaults

    model = architectures.select(VIT, 8, pretrained=False)
    opt = build_parser().parse_args(["--lr", "1e-4", "--fc_lr", "1e-3", "--layer_decay", "0.5",
                                     "--optim", "adamw"])
    optimizer = make_optimizer(opt, model, build_criterion(resolve_dataset_defaults(opt), 4))
    groups = {g["name"]: g for g in optimizer.param_groups}
    layers = sorted(int(n[len("backbone_layer"):]) for n in groups if n.startswith("backbone_"))
    top = layers[-1]
    assert layers == list(range(top + 1)) and top == 12  # embedding, 12 blocks (last with norm)
    for layer in layers:
        assert groups[f"backbone_layer{layer}"]["lr"] == pytest.approx(1e-4 * 0.5 ** (top - layer))
    assert groups["embedding"]["lr"] == 1e-3
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)  # metrics.csv's lr column
    backbone = [p for n, g in groups.items() if n.startswith("backbone_") for p in g["params"]]
    assert len(backbone) == len({id(p) for p in backbone})
    assert {id(p) for p in backbone} == {id(p) for p in model.backbone_parameters()}
    assert groups["backbone_layer0"]["weight_decay"] == opt.decay  # as the classic backbones
    with pytest.raises(TimmOptionError, match="--layer_decay 0.5 needs a timm backbone"):
        architectures.layer_decay_groups(architectures.select("resnet18", 8, pretrained=False),
                                         1e-4, 0.0, 0.5)
    assert np.isclose(build_parser().parse_args([]).layer_decay, 1.0)


def test_a_timm_run_folder_is_one_folder_under_save_path():
    name = rf.default_run_name("cub200", "timm/vit_small_patch16_224_normalize", 0)
    assert name.startswith("cub200_timm-vit_small_patch16_224_normalize_s0_") and "/" not in name
