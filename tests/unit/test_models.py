"""Models: CIFAR ResNets in timm's registry, the build_model factory and local-file weight loading."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn

from bench.models import ModelError, build_model
from bench.models.cifar_resnet import CIFAR_MODEL_NAMES, checkpoint_filter_fn


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# He et al. 2016, Table 6 (CIFAR-10): ResNet-20 0.27M, ResNet-32 0.46M, ResNet-110 1.7M.
@pytest.mark.parametrize("name, published", [
    ("resnet20_cifar", 0.27e6),
    ("resnet32_cifar", 0.46e6),
    ("resnet110_cifar", 1.7e6),
])
def test_he_cifar_param_counts_match_paper(name: str, published: float) -> None:
    model = build_model(name, num_classes=10)
    assert abs(n_params(model) - published) / published < 0.03


def test_all_cifar_models_registered_in_timm() -> None:
    registered = set(timm.list_models("*_cifar")) | set(timm.list_models("resnet34_wb"))
    assert set(CIFAR_MODEL_NAMES) <= registered
    assert set(CIFAR_MODEL_NAMES) == {"resnet8_cifar", "resnet20_cifar", "resnet32_cifar", "resnet44_cifar",
                                      "resnet56_cifar", "resnet110_cifar", "resnet34_wb"}


def test_he_cifar_structure_option_a() -> None:
    model = build_model("resnet20_cifar", num_classes=10)
    assert model.conv1.out_channels == 16 and model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert [len(getattr(model, f"layer{i}")) for i in (1, 2, 3)] == [3, 3, 3]
    # option A: parameter-free shortcuts, so no downsample.* tensors at all
    assert not any("downsample" in k for k in model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    assert model.forward_features(x).shape == (2, 64, 8, 8)


def test_resnet34_wb_shapes_and_params() -> None:
    model = build_model("resnet34_wb", num_classes=100)
    assert model.num_features == 512 and model.fc.in_features == 512
    assert abs(n_params(model) - 21.3e6) / 21.3e6 < 0.01
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert "layer2.0.downsample.0.weight" in model.state_dict()  # 1x1 conv + BN projection shortcut
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, 512, 4, 4)  # 4x4 avg pool at 32x32 input = global pool
        assert model(x).shape == (2, 100)
        assert model.forward_head(feats, pre_logits=True).shape == (2, 512)


@pytest.mark.parametrize("name", ["resnet8_cifar", "resnet32_cifar", "resnet34_wb"])
def test_timm_model_api(name: str) -> None:
    model = build_model(name, num_classes=7, drop_rate=0.1).eval()
    assert model.num_classes == 7
    assert model.pretrained_cfg["first_conv"] == "conv1" and model.pretrained_cfg["classifier"] == "fc"
    assert isinstance(model.get_classifier(), nn.Linear)
    assert model.get_classifier() is model.fc and model.fc.out_features == 7
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        pooled = model.forward_head(model.forward_features(x), pre_logits=True)
        assert pooled.shape == (3, model.num_features) == (3, model.fc.in_features)
        assert torch.equal(model(x), model.fc(pooled))
    model.reset_classifier(4)
    assert model.num_classes == 4 and model.get_classifier().out_features == 4 and model(x).shape == (3, 4)
    model.reset_classifier(0)
    assert model(x).shape == (3, model.num_features)
    assert not isinstance(model.get_classifier(), nn.Linear)      # no head left: features out


@pytest.mark.parametrize("name", ["resnet20_cifar", "resnet34_wb"])
def test_grey_28x28_input(name: str) -> None:
    model = build_model(name, num_classes=10, in_chans=1).eval()
    assert model.conv1.in_channels == 1
    with torch.no_grad():
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
        assert model.forward_head(model.forward_features(torch.randn(2, 1, 28, 28)),
                                  pre_logits=True).shape == (2, model.num_features)


def test_timm_create_model_by_name() -> None:
    model = timm.create_model("resnet32_cifar", num_classes=10)
    assert model.num_classes == 10 and model.fc.out_features == 10 and model.num_features == 64


def test_features_only() -> None:
    model = timm.create_model("resnet20_cifar", features_only=True)
    outs = model(torch.randn(1, 3, 32, 32))
    assert [o.shape[1] for o in outs] == [16, 16, 32, 64]


def _non_classifier(sd: dict) -> dict:
    return {k: v for k, v in sd.items() if not k.startswith("fc.")}


@pytest.mark.parametrize("name, size", [("resnet32_cifar", 32), ("resnet34_wb", 32), ("resnet18", 32)])
def test_pretrained_file_with_new_num_classes(tmp_path: Path, name: str, size: int) -> None:
    src = build_model(name, num_classes=10)
    for m in src.modules():  # non-default BN statistics so the buffers are really compared
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    path = tmp_path / f"{name}.pth"
    torch.save(src.state_dict(), path)

    model = build_model(name, num_classes=5, pretrained_file=str(path))
    saved, loaded = _non_classifier(src.state_dict()), _non_classifier(model.state_dict())
    assert saved.keys() == loaded.keys()
    for k in saved:
        assert torch.equal(saved[k], loaded[k]), k
    assert model.get_classifier().weight.shape == (5, model.num_features)
    assert model.pretrained_cfg["file"] == str(path)
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 3, size, size)).shape == (2, 5)

    # same class count: the classifier is loaded too
    same = build_model(name, num_classes=10, pretrained_file=str(path))
    assert torch.equal(same.get_classifier().weight, src.get_classifier().weight)


def test_pretrained_file_in_chans_adaptation(tmp_path: Path) -> None:
    src = build_model("resnet20_cifar", num_classes=10)
    path = tmp_path / "w.pth"
    torch.save({"state_dict": src.state_dict(), "epoch": 3}, path)  # training-checkpoint layout
    grey = build_model("resnet20_cifar", num_classes=10, in_chans=1, pretrained_file=str(path))
    assert torch.allclose(grey.conv1.weight, src.conv1.weight.sum(dim=1, keepdim=True))  # timm adapt_input_conv
    # and back: a 1-channel checkpoint into a 3-channel model
    path1 = tmp_path / "grey.pth"
    torch.save(grey.state_dict(), path1)
    rgb = build_model("resnet20_cifar", num_classes=10, in_chans=3, pretrained_file=str(path1))
    assert rgb.conv1.weight.shape[1] == 3
    assert torch.allclose(rgb.conv1.weight.sum(dim=1, keepdim=True), grey.conv1.weight, atol=1e-5)


def test_checkpoint_filter_accepts_reference_layouts() -> None:
    model = build_model("resnet34_wb", num_classes=100)
    wb = {"encoder." + k: v for k, v in model.state_dict().items()}  # ResnetEncoder.encoder
    assert checkpoint_filter_fn(wb).keys() == model.state_dict().keys()
    ldam = {("linear." + k[3:] if k.startswith("fc.") else k): v
            for k, v in build_model("resnet32_cifar", 10).state_dict().items()}
    assert "fc.weight" in checkpoint_filter_fn(ldam)


def test_mismatched_architecture_file(tmp_path: Path) -> None:
    path = tmp_path / "r20.pth"
    torch.save(build_model("resnet20_cifar", num_classes=10).state_dict(), path)
    with pytest.raises(ModelError, match="r20.pth"):  # resnet20 weights lack resnet32's extra blocks
        build_model("resnet32_cifar", num_classes=100, pretrained_file=str(path))
    with pytest.raises(ModelError, match="r20.pth"):  # and have blocks resnet8 lacks
        build_model("resnet8_cifar", num_classes=100, pretrained_file=str(path))
    with pytest.raises(ModelError, match="r20.pth"):  # shape mismatch
        build_model("resnet34_wb", num_classes=10, pretrained_file=str(path))


def test_unknown_model_name() -> None:
    with pytest.raises(ModelError, match="resnet32cifar") as info:
        build_model("resnet32cifar", num_classes=10)
    assert "resnet32_cifar" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ModelError, match="no_such_net"):
        build_model("no_such_net", num_classes=10)


def test_missing_weights_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.pth"
    with pytest.raises(ModelError, match=f"model.pretrained_file: {path} does not exist"):
        build_model("resnet20_cifar", num_classes=10, pretrained_file=str(path))


@pytest.mark.parametrize("content", ["truncated", "garbage"])
def test_corrupt_weights_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "bad.pth"
    if content == "truncated":
        torch.save(build_model("resnet20_cifar", num_classes=10).state_dict(), path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ModelError, match=str(path)) as info:
        build_model("resnet20_cifar", num_classes=10, pretrained_file=str(path))
    assert "\n" not in str(info.value)


def test_network_sources_rejected() -> None:
    with pytest.raises(ModelError):
        build_model("hf-hub:timm/resnet18.a1_in1k", num_classes=10)
    with pytest.raises(ModelError):
        build_model("resnet18", num_classes=10, pretrained=True)


def test_zero_init_last_false_starts_every_residual_bn_at_one() -> None:
    """model.zero_init_last=false: torchvision's zero_init_residual=False (MiSLAS, PaCo, GPaCo, BCL build it), each
    block's last BatchNorm weight 1; timm's default starts it at 0. It is refused where it cannot act."""
    from bench.config import ConfigError
    from bench.data.lt import build_lt_data
    from bench.experiment import load_config
    from bench.methods.classifiers import make_model

    base = ["data.dataset=fashion-mnist", "model.name=resnet18"]
    for extra, value in (([], 0.0), (["model.zero_init_last=false"], 1.0)):
        cfg = load_config(None, [*base, *extra])
        model = make_model(cfg, build_lt_data(cfg.data))
        last = [b.bn2.weight for layer in (model.layer1, model.layer4) for b in layer]
        assert all(torch.all(w == value) for w in last)
    with pytest.raises(ConfigError, match="config key 'model.zero_init_last': False sets the initialisation"):
        load_config(None, [*base, "model.zero_init_last=false", "model.experts=3"])


def test_freeze_convs_keeps_only_the_last_blocks_convolutions_training() -> None:
    """train.freeze_convs (PaCo's / GPaCo's Places-LT script: disable_conv, then layer4[-1] trainable): the
    optimiser steps the last block's convolutions, every BatchNorm and the classifier; no other convolution moves."""
    import torch.nn.functional as F

    from bench.config import ConfigError
    from bench.data.lt import build_lt_data
    from bench.experiment import load_config
    from bench.methods.classifiers import make_model
    from bench.models.parts import freeze_convs_but_last_block
    from bench.train.optim import make_optimizer

    cfg = load_config(None, ["data.dataset=fashion-mnist", "model.name=resnet18", "train.freeze_convs=true"])
    model = make_model(cfg, build_lt_data(cfg.data))
    assert freeze_convs_but_last_block(model) == 18          # 20 convolutions, 2 in layer4.1
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = make_optimizer(model, cfg.train)
    loss = F.cross_entropy(model(torch.randn(4, 1, 28, 28)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    opt.step()
    after = model.state_dict()
    moved = {k for k in before if k.endswith("weight") and not torch.equal(before[k], after[k])}
    convs = {k for k in before if ".conv" in k or "downsample.0" in k or k == "conv1.weight"}
    assert moved & convs == {"layer4.1.conv1.weight", "layer4.1.conv2.weight"}
    assert {"bn1.weight", "layer1.0.bn1.weight", "fc.weight"} <= moved
    with pytest.raises(ConfigError, match="config key 'stage2.train.freeze_convs'"):
        load_config(None, ["data.dataset=fashion-mnist", "stage2.train.freeze_convs=true"])


def test_reinit_last_blocks_builds_a_fresh_block_at_pytorchs_default_init(tmp_path) -> None:
    """model.reinit_last_blocks (MiSLAS's Places-LT model: resnet152_fe without layer4.2, then a new
    Bottleneck(2048, 512)): the last block of the loaded weights starts as a freshly built module would, PyTorch's
    kaiming_uniform(a=sqrt(5)), |w| <= 1/sqrt(fan_in), BatchNorm at 1 / 0 with running statistics 0 / 1; every
    other weight is the file's."""
    from bench.config import ConfigError
    from bench.data.lt import build_lt_data
    from bench.experiment import load_config
    from bench.methods.classifiers import make_model

    base = ["data.dataset=fashion-mnist", "model.name=resnet18"]
    cfg = load_config(None, base)
    pre = make_model(cfg, data := build_lt_data(cfg.data))
    with torch.no_grad():       # weights unlike any fresh init: the reset must replace them
        for p in pre.parameters():
            p.add_(3.0)
        for name, b in pre.named_buffers():
            if name.endswith("running_mean"):
                b.fill_(0.5)
    torch.save(pre.state_dict(), tmp_path / "pre.pt")
    cfg = load_config(None, [*base, f"model.pretrained_file={tmp_path / 'pre.pt'}", "model.reinit_last_blocks=1"])
    model = make_model(cfg, data)
    sd, file = model.state_dict(), pre.state_dict()
    block = {k for k in sd if k.startswith("layer4.1.")}
    assert all(torch.equal(sd[k], file[k]) for k in sd if k not in block)
    for conv in (model.layer4[1].conv1, model.layer4[1].conv2):
        w = conv.weight.detach()
        bound = 1 / math.sqrt(w[0].numel())
        assert float(w.abs().max()) <= bound * (1 + 1e-6) and float(w.abs().max()) > 0.9 * bound   # float32 draws
    for bn in (model.layer4[1].bn1, model.layer4[1].bn2):
        assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)
        assert torch.all(bn.running_mean == 0) and torch.all(bn.running_var == 1)
    with pytest.raises(ConfigError, match="config key 'model.reinit_last_blocks': 1 re-initialises blocks of a "
                                          "pretrained single model"):
        load_config(None, [*base, "model.reinit_last_blocks=1"])


def test_train_only_last_blocks_freezes_the_trunk_in_eval_mode() -> None:
    """train.train_only_last_blocks (MiSLAS's Places-LT stage 1: `model.eval()` under no_grad, `block.train()`): one
    optimiser step moves only the last block and the classifier; the trunk's BatchNorm statistics stay as loaded
    while the block's move; no gradient reaches the trunk."""
    import torch.nn.functional as F

    from bench.config import ConfigError
    from bench.data.lt import build_lt_data
    from bench.experiment import load_config
    from bench.methods.classifiers import make_model
    from bench.models.parts import freeze_all_but_last_blocks, modules_outside
    from bench.train.optim import make_optimizer

    cfg = load_config(None, ["data.dataset=fashion-mnist", "model.name=resnet18", "train.train_only_last_blocks=1"])
    model = make_model(cfg, build_lt_data(cfg.data))
    trunk = freeze_all_but_last_blocks(model, 1)
    names = {id(m): n for n, m in model.named_modules()}
    assert [names[id(m)] for m in trunk] == ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4.0"]
    # the outermost modules only; a module without parameters goes with its parent
    assert [names[id(m)] for m in modules_outside(model, {"layer4.1.conv1.weight"})] == [
        "conv1", "bn1", "layer1", "layer2", "layer3", "layer4.0", "layer4.1.bn1", "layer4.1.conv2", "layer4.1.bn2",
        "fc"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = make_optimizer(model, cfg.train)
    model.train()
    for m in trunk:
        m.eval()
    F.cross_entropy(model(torch.randn(4, 1, 28, 28)), torch.tensor([0, 1, 2, 3])).backward()
    opt.step()
    after = model.state_dict()
    kept = ("layer4.1.", "fc.")
    moved = {k for k in before if not k.endswith("num_batches_tracked") and not torch.equal(before[k], after[k])}
    assert moved and all(k.startswith(kept) for k in moved)
    assert {"layer4.1.bn1.running_mean", "layer4.1.conv1.weight", "fc.weight"} <= moved
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith(kept))
    # a head with a norm of its own (ConvNeXt's head.norm before head.fc) trains with its classifier
    convnext = timm.create_model("convnext_atto", num_classes=3)
    freeze_all_but_last_blocks(convnext, 1)
    assert {n for n, q in convnext.named_parameters() if q.requires_grad and n.startswith("head.")} == {
        "head.norm.weight", "head.norm.bias", "head.fc.weight", "head.fc.bias"}
    assert not convnext.stages[3].blocks[0].conv_dw.weight.requires_grad
    assert convnext.stages[3].blocks[1].conv_dw.weight.requires_grad
    with pytest.raises(ConfigError, match="config key 'train.train_only_last_blocks': 1 freezes all but the last "
                                          "blocks and the classifier, which train.freeze_convs also decides"):
        load_config(None, ["data.dataset=fashion-mnist", "train.train_only_last_blocks=1", "train.freeze_convs=true"])
    with pytest.raises(ConfigError, match="config key 'stage2.bn_last_blocks': 1 chooses which BatchNorm"):
        load_config(None, ["data.dataset=fashion-mnist", "stage2.bn_last_blocks=1"])
