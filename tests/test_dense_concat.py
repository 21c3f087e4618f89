"""One rule for every dense family (DenseNet, FC-DenseNet, RDNet, HarDNet): a block writes into the shared buffer
(the HarDBlock: runs its recomputing Function) only in memory-efficient training; a forward without gradients, and
one in eval mode, runs the plain concatenation; traced export the chained two-way Concat (docs/architecture.md)."""
import sys

import pytest
import torch

import segdense.backbones  # noqa: F401  (imports every backbone module)
from segdense.backbones import build_backbone
from segdense.backbones.dense_concat import block_buffer, chained_concat, dense_path
from segdense.backbones.hardnet_efficient import efficient_hardblock

FAMILIES = {
    "densenet_custom": dict(num_units_per_block=(2, 2), growth_rate=4),
    "fcdensenet_custom": dict(down_blocks=(2, 2), bottleneck_layers=2, growth_rate=4),
    "rdnet_custom": dict(growth_rates=(8, 8), num_blocks_list=(2, 2), is_downsample_block=(False, True),
                         block_type=("Block", "BlockESE"), num_init_features=16, output_stride=8),
    "hardnet39ds": dict(stem_channels=(8, 12), transition_channels=(16, 24), grmul=1.6, growth_rates=(4, 6),
                        num_layers=(4, 4), downsample=(1, 0), output_stride=8),
}


@pytest.mark.parametrize("memory_efficient, training, grad, expected", [
    (True, True, True, "buffer"),
    (True, True, False, "plain"),
    (True, False, True, "plain"),
    (True, False, False, "plain"),
    (False, True, True, "plain"),
    (False, False, False, "plain"),
])
def test_the_buffer_is_taken_only_in_memory_efficient_training(memory_efficient, training, grad, expected):
    with torch.set_grad_enabled(grad):
        assert dense_path(memory_efficient, training) == expected


def test_tracing_takes_the_export_form():
    seen = []

    def record(x):
        seen.append(dense_path(True, True))
        return x * 2

    torch.jit.trace(record, torch.ones(1), check_trace=False)
    assert seen == ["export"]


def _buffer_calls(monkeypatch) -> list:
    """Counts every block_buffer call (and every HarDBlock Function's, which keeps no buffer), wherever a backbone
    module has bound the name."""
    calls = []

    def counting(function):
        def counted(*args):
            calls.append(function.__name__)
            return function(*args)
        return counted

    for function in (block_buffer, efficient_hardblock):
        for name, module in list(sys.modules.items()):
            if name.startswith("segdense.backbones.") and hasattr(module, function.__name__):
                monkeypatch.setattr(module, function.__name__, counting(function))
    return calls


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("training, grad, buffered", [(True, True, True), (True, False, False),
                                                      (False, True, False), (False, False, False)])
def test_every_family_follows_the_rule(family, training, grad, buffered, monkeypatch):
    calls = _buffer_calls(monkeypatch)
    net = build_backbone(family, memory_efficient=True, **FAMILIES[family]).train(training)
    x = torch.randn(2, 3, 32, 32, requires_grad=grad)
    with torch.set_grad_enabled(grad):
        net.forward_features(x)
    assert bool(calls) == buffered, f"{family}, training={training}, grad={grad}: {len(calls)} buffers"


def test_chained_concat_is_the_plain_concatenation():
    torch.manual_seed(0)
    convs = [torch.nn.Conv2d(3 + 2 * i, 2, 3, padding=1) for i in range(3)]
    x = torch.randn(1, 3, 8, 8)
    features = [x]
    for conv in convs:
        features.append(conv(torch.cat(features, 1)))
    torch.testing.assert_close(chained_concat(x, convs), torch.cat(features, 1), rtol=0, atol=0)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_block_buffer_keeps_the_input_and_its_memory_format(memory_format):
    x = torch.randn(2, 3, 4, 5).contiguous(memory_format=memory_format)
    buf = block_buffer(x, 7)
    assert buf.shape == (2, 7, 4, 5) and buf.is_contiguous(memory_format=memory_format)
    assert torch.equal(buf[:, :3], x)
