"""RDNet's memory-efficient stages (one buffer per stage, each layer recomputed in backward) are the plain
network: in float64 the same features, input gradient and parameter gradients in every module state users create
(training, eval with and without gradients, frozen stages, frozen LayerNorms or layers, drop path, output strides
8/16, channels-last), the same values in bf16 autocast up to bf16 rounding, the same module tree and checkpoint,
and at most half the bytes autograd keeps for backward."""
import pytest
import torch

from segdense.backbones import build_backbone
from segdense.backbones.rdnet import LayerNorm2d
from tests.test_memory_efficient import _relative_error, _saved_bytes, assert_close_scaled

# Two layers per stage, every stage kind (plain and ESE layers, 1x1 and 2x2 transitions); a layer scale of 0.5
# so every layer changes the features (timm's 1e-6 would hide a wrong layer behind rounding).
TINY = dict(growth_rates=(8, 8, 16, 16), num_blocks_list=(2, 2, 2, 2), is_downsample_block=(False, True, True, True),
            block_type=("Block", "Block", "BlockESE", "BlockESE"), num_init_features=16, ls_init_value=0.5)


def _pair(dtype=torch.float64, **kw):
    torch.manual_seed(0)
    plain = build_backbone("rdnet_custom", memory_efficient=False, **{**TINY, **kw}).to(dtype)
    eff = build_backbone("rdnet_custom", memory_efficient=True, **{**TINY, **kw}).to(dtype)
    eff.load_state_dict(plain.state_dict())
    return plain, eff


def _input(dtype=torch.float64, size=64, batch=2):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(3), dtype=dtype)


def _loss(feats):
    # Channels weighted differently, so a gradient routed to the wrong channel slice shows.
    w = lambda f: torch.linspace(-1, 1, f.shape[1], dtype=f.dtype).view(1, -1, 1, 1)
    return sum((f.float() * w(f.float())).square().mean() for f in feats.values())


def _step(net, x, seed=1, input_grad=True):
    x = x.clone().requires_grad_(input_grad)
    torch.manual_seed(seed)  # the same drop-path draws in both modes
    feats = net.forward_features(x)
    _loss(feats).backward()
    return feats, x.grad


def _assert_same_step(plain, eff, x, rel=1e-12, input_grad=True):
    fp, gp = _step(plain, x, input_grad=input_grad)
    fe, ge = _step(eff, x, input_grad=input_grad)
    assert list(fe) == list(fp)
    for name in fp:
        assert_close_scaled(fe[name], fp[name], f"feature {name}", rel)
    if input_grad:
        assert_close_scaled(ge, gp, "input gradient", rel)
    for (name, p), q in zip(plain.named_parameters(), eff.parameters()):
        if p.grad is None:
            assert q.grad is None, f"{name}: frozen in plain mode, but got a gradient in memory-efficient mode"
        else:
            assert q.grad is not None, f"{name}: no gradient in memory-efficient mode"
            assert_close_scaled(q.grad, p.grad, f"gradient of {name}", rel)
    return fp


def test_training_step_equals_plain():
    plain, eff = _pair()
    feats = _assert_same_step(plain, eff, _input())
    assert [f.shape[1] for f in feats.values()] == [f.channels for f in eff.feature_info]
    # Every parameter trains (the comparison above was not between two sets of missing gradients).
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in eff.parameters())


@pytest.mark.parametrize("frozen_stages", [0, 1, 2])
def test_frozen_stages_equal_plain_and_stay_without_gradients(frozen_stages):
    plain, eff = _pair(frozen_stages=frozen_stages)
    _assert_same_step(plain, eff, _input())
    frozen = [n for n, p in eff.named_parameters() if eff.stage_of(n) <= frozen_stages]
    assert frozen and all(eff.get_parameter(n).grad is None for n in frozen)
    assert any(p.grad is not None for p in eff.parameters())


def test_layernorms_without_grad_inside_a_trained_stage_equal_plain():
    plain, eff = _pair()
    for net in (plain, eff):
        for m in net.dense_stages[1].modules():
            if isinstance(m, LayerNorm2d):
                m.requires_grad_(False)
    _assert_same_step(plain, eff, _input())
    assert eff.dense_stages[1][2].dense_block0.layers.layers[1].weight.grad is None
    assert eff.dense_stages[1][2].dense_block0.layers.layers[0].weight.grad is not None


def test_one_frozen_layer_inside_a_trained_stage_equals_plain():
    plain, eff = _pair()
    for net in (plain, eff):
        net.dense_stages[2][2].dense_block0.requires_grad_(False)
    _assert_same_step(plain, eff, _input())
    assert all(p.grad is None for p in eff.dense_stages[2][2].dense_block0.parameters())
    assert all(p.grad is not None for p in eff.dense_stages[2][2].dense_block1.parameters())


def test_frozen_everything_but_the_input_gradient_equals_plain():
    plain, eff = _pair()
    plain.requires_grad_(False), eff.requires_grad_(False)
    _assert_same_step(plain, eff, _input())


def test_frozen_stem_without_input_gradient_equals_plain():
    # The first stage's input needs no gradient: the Function must not compute one (nor fail).
    plain, eff = _pair(frozen_stages=0)
    _assert_same_step(plain, eff, _input(), input_grad=False)


def test_drop_path_uses_the_same_draws_as_plain():
    plain, eff = _pair(drop_path_rate=0.5)
    x = _input(batch=4)
    _assert_same_step(plain, eff, x)
    # With another seed the draws differ: the features differ (so drop path is live in this test).
    f1 = _step(eff, x, seed=1)[0]["stage4"]
    f2 = _step(eff, x, seed=2)[0]["stage4"]
    assert (f1 - f2).abs().max() > 1e-3


@pytest.mark.parametrize("output_stride", [8, 16])
def test_dilated_output_strides_equal_plain(output_stride):
    plain, eff = _pair(output_stride=output_stride, drop_path_rate=0.2)
    feats = _assert_same_step(plain, eff, _input())
    assert feats["stage4"].shape[-1] == 64 // output_stride


def test_channels_last_input_and_weights_equal_plain():
    plain, eff = _pair()
    plain, eff = (m.to(memory_format=torch.channels_last) for m in (plain, eff))
    x = _input().contiguous(memory_format=torch.channels_last)
    _assert_same_step(plain, eff, x)


def test_stage_buffers_keep_the_channels_last_layout_of_the_stem():
    # The stem's LayerNorm (over channels, on a permuted view) hands on a channels-last map whatever the input's
    # format; the stage buffers keep that layout with and without gradients, where oneDNN's depthwise convs are fast.
    _, eff = _pair()
    for x in (_input(), _input().contiguous(memory_format=torch.channels_last)):
        for name, f in eff.forward_features(x.requires_grad_()).items():
            assert f.is_contiguous(memory_format=torch.channels_last), name
        with torch.no_grad():
            for name, f in eff.forward_features(x).items():
                assert f.is_contiguous(memory_format=torch.channels_last), f"no-grad {name}"


def test_eval_mode_with_and_without_gradients_equals_plain():
    plain, eff = _pair(drop_path_rate=0.5)
    plain.eval(), eff.eval()
    _assert_same_step(plain, eff, _input())  # eval with gradients (e.g. input attribution): no drop path
    with torch.no_grad():
        fp, fe = plain.forward_features(_input()), eff.forward_features(_input())
    for name in fp:
        assert_close_scaled(fe[name], fp[name], f"no-grad feature {name}", 1e-12)


def test_no_grad_in_training_mode_equals_plain():
    plain, eff = _pair(drop_path_rate=0.5)
    outs = []
    for net in (plain, eff):
        torch.manual_seed(5)
        with torch.no_grad():
            outs.append(net.forward_features(_input()))
    for name in outs[0]:
        assert_close_scaled(outs[1][name], outs[0][name], f"no-grad training feature {name}", 1e-12)


def test_bf16_autocast_matches_plain_and_recomputes_under_autocast():
    plain, eff = _pair(dtype=torch.float32)
    ref, _ = _pair(dtype=torch.float32)
    x = _input(torch.float32)
    _step(ref, x)  # float32, no autocast: what both bf16 runs approximate
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fp, gp = _step(plain, x)
        fe, ge = _step(eff, x)
    for name in fp:
        torch.testing.assert_close(fe[name].float(), fp[name].float(), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(ge, gp, rtol=5e-2, atol=5e-3)
    assert all(q.grad.dtype == torch.float32 for q in eff.parameters())
    grads = lambda net: [p.grad for p in net.parameters()]
    # Equal up to bf16 rounding: as close to the float32 gradients as plain mode's bf16 gradients are.
    err_eff, err_plain = _relative_error(grads(eff), grads(ref)), _relative_error(grads(plain), grads(ref))
    assert err_eff <= 1.25 * err_plain and err_plain < 0.05, (err_eff, err_plain)
    assert _relative_error(grads(eff), grads(plain)) < 0.02
    # The backward recomputation runs each layer in bf16 as the forward did (the layer's 1x1 convs see autocast).
    seen = []
    conv = eff.dense_stages[0][0].dense_block0.layers.layers[2]
    conv.register_forward_hook(lambda m, i, o: seen.append((torch.is_autocast_enabled("cpu"), o.dtype)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = _loss(eff.forward_features(x.clone().requires_grad_()))
    loss.backward()  # outside autocast, as training loops do
    assert seen == [(True, torch.bfloat16), (True, torch.bfloat16)]  # forward, then the recomputation


def test_same_module_tree_state_dict_and_parameter_count():
    plain, eff = _pair()
    assert [n for n, _ in plain.named_modules()] == [n for n, _ in eff.named_modules()]
    sp, se = plain.state_dict(), eff.state_dict()
    assert list(sp) == list(se) and all(torch.equal(sp[k], se[k]) for k in sp)
    assert sum(p.numel() for p in plain.parameters()) == sum(p.numel() for p in eff.parameters())
    # One checkpoint serves both: the plain model's state loads strictly into the efficient one and back.
    plain.load_state_dict(se, strict=True)


def test_saves_at_most_half_of_plain_for_backward():
    plain, eff = _pair(dtype=torch.float32)
    x = _input(torch.float32, size=128, batch=1)
    ratio = _saved_bytes(eff, x.clone()) / _saved_bytes(plain, x.clone())
    assert ratio <= 0.5, f"memory-efficient saves {ratio:.2f}x plain's bytes for backward"


def test_rdnet_tiny_saves_at_most_half_of_plain_for_backward():
    torch.manual_seed(0)
    plain = build_backbone("rdnet_tiny")
    eff = build_backbone("rdnet_tiny", memory_efficient=True)
    x = torch.randn(1, 3, 128, 128)
    ratio = _saved_bytes(eff, x.clone()) / _saved_bytes(plain, x.clone())
    assert ratio <= 0.5, f"memory-efficient rdnet_tiny saves {ratio:.2f}x plain's bytes for backward"


def test_saved_memory_grows_linearly_with_the_layers_of_a_stage():
    def saved(layers, memory_efficient):
        torch.manual_seed(0)
        net = build_backbone("rdnet_custom", growth_rates=(8,), num_blocks_list=(layers,), is_downsample_block=(False,),
                             block_type=("Block",), num_init_features=16, output_stride=4,
                             memory_efficient=memory_efficient)
        return _saved_bytes(net, torch.randn(1, 3, 32, 32))

    s4, s8, s16 = (saved(n, True) for n in (4, 8, 16))
    assert s16 - s8 == pytest.approx(2 * (s8 - s4), rel=0.05)  # linear: each layer adds its own channels
    p4, p8, p16 = (saved(n, False) for n in (4, 8, 16))
    assert p16 - p8 > 3 * (p8 - p4)  # plain mode: every layer keeps all earlier channels again
