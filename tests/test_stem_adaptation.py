"""Pretrained RGB weights on other band counts: every backbone family adapts its stem so that the adapted model
on an image x equals the RGB model on the RGB image x stands for (channel j: the mean of the bands that carry RGB
channel j, bands and channels laid side by side cyclically; ``segdense.backbones.adapt_input_conv``)."""
import pytest
import torch

from segdense.backbones import densenet_custom, fcdensenet_custom, rdnet_custom
from segdense.backbones.resnet import resnet50

BUILDERS = {
    "densenet": lambda **kw: densenet_custom(num_units_per_block=(1, 1, 1, 1), growth_rate=8, **kw),
    "fcdensenet": lambda **kw: fcdensenet_custom(down_blocks=(1, 1), bottleneck_layers=1, growth_rate=4,
                                                 num_init_features=8, drop_rate=0.0, **kw),
    "rdnet": lambda **kw: rdnet_custom(growth_rates=(8, 8), num_blocks_list=(1, 1), is_downsample_block=(False, True),
                                       block_type=("Block", "Block"), num_init_features=8, output_stride=8,
                                       **kw),
    "resnet": lambda **kw: resnet50(**kw),
}


def rgb_image_of(x: torch.Tensor) -> torch.Tensor:
    """The RGB image an N-band image stands for under the adaptation rule."""
    bands = x.shape[1]
    slots = max(3, bands)
    return torch.stack([torch.stack([x[:, s % bands] for s in range(slots) if s % 3 == j]).mean(0)
                        for j in range(3)], dim=1)


def outputs(model, x):
    out = model.forward_features(x) if hasattr(model, "forward_features") else model(x)
    values = out.values() if isinstance(out, dict) else out if isinstance(out, (list, tuple)) else [out]
    return [v for v in values if isinstance(v, torch.Tensor)]


@pytest.mark.parametrize("family", sorted(BUILDERS))
@pytest.mark.parametrize("bands", [1, 2, 4, 13])
def test_adapted_model_on_x_equals_the_rgb_model_on_the_image_x_stands_for(tmp_path, family, bands):
    torch.manual_seed(0)
    rgb_model = BUILDERS[family]().eval()  # float64 below: the property is exact, rounding is not what is tested
    path = tmp_path / "rgb.pth"
    torch.save(rgb_model.state_dict(), path)
    adapted = BUILDERS[family](in_channels=bands, pretrained=str(path)).eval().double()
    rgb_model.double()
    x = torch.rand(1, bands, 32, 32, dtype=torch.float64)
    grey = x[:, :1].expand(1, bands, 32, 32)
    with torch.no_grad():
        for image in (x, grey):  # any image; a grey one is (g, g, g) for the RGB model
            for got, want in zip(outputs(adapted, image), outputs(rgb_model, rgb_image_of(image)), strict=True):
                torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    if bands == 1:
        assert torch.equal(rgb_image_of(x), x.expand(1, 3, 32, 32))
