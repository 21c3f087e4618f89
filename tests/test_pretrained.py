"""Loading torchvision / safetensors weights into segdense DenseNets, without network."""
import logging
import socket

import pytest
import torch

from segdense.backbones import adapt_input_conv, convert_old_keys, densenet121, densenet_custom
from segdense.backbones import weights as weights_mod

import torchvision  # noqa: E402


@pytest.fixture(scope="module")
def tv_model():
    torch.manual_seed(0)
    model = torchvision.models.densenet121()
    # Non-trivial BN statistics, so that parity really tests the mapping.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture(scope="module")
def tv_checkpoint(tv_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "densenet121.pth"
    torch.save(tv_model.state_dict(), path)
    return path


def to_old_keys(state):
    """Write keys the way torchvision's hosted files do: 'denselayer1.norm.1.weight'."""
    out = {}
    for k, v in state.items():
        for part in ("norm1", "relu1", "conv1", "norm2", "relu2", "conv2"):
            k = k.replace(f".{part}.", f".{part[:-1]}.{part[-1]}.")
        out[k] = v
    return out


def test_logits_equal_torchvision_at_output_stride_32(tv_model, tv_checkpoint):
    model = densenet121(num_classes=1000, pretrained=str(tv_checkpoint)).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(x), tv_model(x), rtol=0, atol=1e-5)


def test_training_gradients_equal_torchvision(tmp_path):
    # Float64, training mode (batch statistics), a small DenseNet-BC: segdense's graph (transitions
    # pool before their 1x1 conv; channels-last on CPU) computes torchvision's gradients.
    torch.manual_seed(0)
    tv = torchvision.models.DenseNet(growth_rate=8, block_config=(2, 3, 2, 2), num_init_features=16,
                                     num_classes=5).double().train()
    path = tmp_path / "tiny.pth"
    torch.save(tv.state_dict(), path)
    model = densenet_custom(num_units_per_block=(2, 3, 2, 2), growth_rate=8, num_classes=5,
                            pretrained=str(path)).double().train()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    tv(x).square().mean().backward()
    model(x).square().mean().backward()
    tv_params = dict(tv.named_parameters())
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, tv_params[name].grad, rtol=1e-9, atol=1e-12, msg=name)


def test_old_dotted_keys_load(tv_model, tmp_path):
    old = to_old_keys(tv_model.state_dict())
    assert "features.denseblock1.denselayer1.norm.1.weight" in old
    path = tmp_path / "old.pth"
    torch.save(old, path)
    model = densenet121(num_classes=1000, pretrained=str(path)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), tv_model(x), rtol=0, atol=1e-5)


def test_convert_old_keys_leaves_new_keys_alone():
    state = {"features.denselayer1.norm.1.weight": 1, "features.transition1.norm.weight": 2}
    assert convert_old_keys(state) == {
        "features.denselayer1.norm1.weight": 1,
        "features.transition1.norm.weight": 2,
    }


@pytest.mark.parametrize("output_stride", [16, 8])
def test_loads_strictly_at_lower_output_strides(tv_model, tv_checkpoint, output_stride):
    loaded = densenet121(num_classes=1000, output_stride=output_stride, pretrained=str(tv_checkpoint)).state_dict()
    for k, v in tv_model.state_dict().items():
        assert torch.equal(loaded[k], v), k


def test_safetensors_file_loads(tv_model, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in tv_model.state_dict().items()}, str(path))
    model = densenet121(num_classes=1000, pretrained=str(path))
    assert torch.equal(model.features.conv0.weight, tv_model.features.conv0.weight)


def test_other_num_classes_drops_classifier_and_says_so(tv_checkpoint, caplog):
    with caplog.at_level(logging.WARNING):
        model = densenet121(num_classes=21, pretrained=str(tv_checkpoint))
    assert model.classifier.out_features == 21
    assert "dropped classifier.weight" in caplog.text


def test_features_only_model_loads_backbone_weights(tv_model, tv_checkpoint):
    model = densenet121(pretrained=str(tv_checkpoint))
    assert model.classifier is None
    assert torch.equal(model.features.norm5.running_var, tv_model.features.norm5.running_var)


def test_checkpoint_with_wrapped_and_prefixed_state_dict(tv_model, tmp_path):
    path = tmp_path / "wrapped.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in tv_model.state_dict().items()}}, path)
    model = densenet121(num_classes=1000, pretrained=str(path))
    assert torch.equal(model.features.conv0.weight, tv_model.features.conv0.weight)


def test_grayscale_stem_is_summed(tv_model, tv_checkpoint):
    model = densenet121(in_channels=1, pretrained=str(tv_checkpoint))
    torch.testing.assert_close(
        model.features.conv0.weight, tv_model.features.conv0.weight.sum(1, keepdim=True)
    )


def test_multispectral_stem_for_a_multiple_of_three_bands_is_smps_rule():
    w = torch.randn(4, 3, 7, 7)
    torch.testing.assert_close(adapt_input_conv(w, 6), w.repeat(1, 2, 1, 1) * 3 / 6)


def test_wrong_architecture_error_names_the_problem(tv_checkpoint):
    with pytest.raises(ValueError, match="do not fit this model.*(missing|unexpected|wrong shape)"):
        densenet_custom(num_units_per_block=(2, 2, 2, 2), growth_rate=8, pretrained=str(tv_checkpoint))


def test_missing_file_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="pretrained weights file not found"):
        densenet121(pretrained=str(tmp_path / "nope.pth"))


def test_corrupt_file_error(tmp_path):
    path = tmp_path / "corrupt.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not read weights"):
        densenet121(pretrained=str(path))


def test_weights_only_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": object()}, path)
    with pytest.raises(ValueError, match="could not read weights") as error:
        densenet121(pretrained=str(path))
    assert "only unpickles with weights_only=False" in str(error.value)
    assert "Re-running" not in str(error.value)  # torch's advice to turn weights_only off is not passed on


def test_imagenet_download_fails_clearly_without_network(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def refuse(*args, **kwargs):
        raise socket.gaierror("name resolution disabled in test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    with pytest.raises(RuntimeError, match=r"could not download ImageNet weights for densenet121.*pretrained="):
        densenet121(pretrained="imagenet")
    assert not list((tmp_path / "checkpoints").iterdir())  # no half-written file left behind


def test_imagenet_uses_cached_file(tv_model, monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    target = tmp_path / "checkpoints" / weights_mod.IMAGENET_URLS["densenet121"].rsplit("/", 1)[1]
    target.parent.mkdir(parents=True)
    torch.save(to_old_keys(tv_model.state_dict()), target)
    model = densenet121(num_classes=1000, pretrained="imagenet")
    assert torch.equal(model.features.conv0.weight, tv_model.features.conv0.weight)


def test_imagenet_urls_match_torchvision():
    from torchvision.models import densenet as tvd

    for arch, enum in [
        ("densenet121", tvd.DenseNet121_Weights),
        ("densenet169", tvd.DenseNet169_Weights),
        ("densenet201", tvd.DenseNet201_Weights),
        ("densenet161", tvd.DenseNet161_Weights),
    ]:
        assert weights_mod.IMAGENET_URLS[arch] == enum.IMAGENET1K_V1.url


def test_imagenet_for_custom_net_is_refused():
    with pytest.raises(ValueError, match="needs a named DenseNet"):
        densenet_custom(num_units_per_block=(2, 2), growth_rate=8, pretrained="imagenet")


def test_a_file_without_classifier_keys_warns_that_the_classifier_stays_fresh(tv_model, tmp_path, caplog):
    path = tmp_path / "backbone_only.pth"
    torch.save({k: v for k, v in tv_model.state_dict().items() if not k.startswith("classifier.")}, path)
    torch.manual_seed(3)
    fresh = densenet121(num_classes=1000).classifier.weight.clone()
    torch.manual_seed(3)
    with caplog.at_level(logging.WARNING):
        model = densenet121(num_classes=1000, pretrained=str(path))
    assert f"pretrained weights {path} hold no classifier" in caplog.text and "fresh initialisation" in caplog.text
    assert torch.equal(model.classifier.weight, fresh)  # really left as initialised
    assert torch.equal(model.features.norm5.running_var, tv_model.features.norm5.running_var)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        densenet121(pretrained=str(path))  # a features-only model needs no classifier: nothing to say
    assert "classifier" not in caplog.text
