"""CUDA-graphed dense blocks (``DenseNet(cuda_graphs=True)``): refusals and eager fallbacks on CPU;
on CUDA, graphed training equals eager training (gradients, BatchNorm buffers, accumulation, a
second forward before backward, autocast). Needs no hydra (runs under .ci/gpu-check)."""
import copy
import pickle

import pytest
import torch

from segdense.backbones import densenet_custom
from tests.test_cuda import no_tf32  # noqa: F401  (fixture: true fp32 convolutions)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def tiny(**kw):
    kw = {"num_units_per_block": (2, 3), "growth_rate": 4, "output_stride": 8, **kw}
    return densenet_custom(**kw)


def loss_of(net, x):
    return net.forward_features(x)["block2"].float().square().mean()


def test_cuda_graphs_needs_a_cuda_input_in_training():
    net = tiny(cuda_graphs=True).train()
    with pytest.raises(ValueError, match="cuda_graphs=True needs a CUDA input"):
        net(torch.randn(2, 3, 32, 32))


def test_cuda_graphs_refuses_cumulative_batchnorm_momentum():
    net = tiny(cuda_graphs=True).train()
    net.features.denseblock1.denselayer1.norm2.momentum = None
    with pytest.raises(ValueError, match="momentum=None"):
        net(torch.randn(2, 3, 32, 32))


def test_cuda_graphs_value_is_checked():
    with pytest.raises(ValueError, match="cuda_graphs must be True or False"):
        tiny(cuda_graphs="yes")


def test_eval_and_no_grad_run_eagerly_with_the_same_values():
    torch.manual_seed(0)
    ref = tiny()
    net = tiny(cuda_graphs=True)
    net.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 32, 32)
    ref.eval(), net.eval()
    torch.testing.assert_close(net(x), ref(x), rtol=0, atol=0)
    ref.train(), net.train()
    with torch.no_grad():
        torch.testing.assert_close(net(x), ref(x), rtol=0, atol=0)
    # no_grad training forwards update the running statistics as usual
    for a, b in zip(net.buffers(), ref.buffers()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_copies_start_without_graphs():
    net = tiny(cuda_graphs=True)
    net.features.denseblock1.graphs.passes[("fake",)] = object()
    for clone in (copy.deepcopy(net), pickle.loads(pickle.dumps(net))):
        assert clone.cuda_graphs
        assert clone.features.denseblock1.graphs.passes == {}
    assert len(net.features.denseblock1.graphs.passes) == 1


def pair(memory_efficient, channels_last=False):
    torch.manual_seed(0)
    eager = tiny(memory_efficient=memory_efficient).cuda()
    graphed = tiny(memory_efficient=memory_efficient, cuda_graphs=True).cuda()
    graphed.load_state_dict(eager.state_dict())
    if channels_last:
        eager, graphed = (m.to(memory_format=torch.channels_last) for m in (eager, graphed))
    return eager.train(), graphed.train()


def assert_same_state(eager, graphed, rtol=1e-5, atol=1e-6):
    for (name, p), q in zip(eager.named_parameters(), graphed.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=rtol, atol=atol, msg=name)
    for (name, b), c in zip(eager.named_buffers(), graphed.buffers()):
        torch.testing.assert_close(c, b, rtol=rtol, atol=atol, msg=name)


@needs_cuda
@pytest.mark.parametrize("memory_efficient", [False, True])
def test_graphed_training_equals_eager(no_tf32, memory_efficient):
    eager, graphed = pair(memory_efficient)
    opts = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m in (eager, graphed)]
    for step in range(4):  # capture on step 0, replays after; a new input every step
        x = torch.randn(2, 3, 40, 48, device="cuda")
        for m, opt in zip((eager, graphed), opts):
            opt.zero_grad(set_to_none=True)
            loss_of(m, x).backward()
        assert_same_state(eager, graphed)  # warm-up passes left no trace in the buffers
        for opt in opts:
            opt.step()
    assert len(graphed.features.denseblock1.graphs.passes) == 1


@needs_cuda
def test_gradients_accumulate_over_two_backward_passes(no_tf32):
    eager, graphed = pair(True)
    xs = [torch.randn(2, 3, 32, 32, device="cuda") for _ in range(2)]
    for m in (eager, graphed):
        for x in xs:  # forward, backward, forward, backward: p.grad sums both
            loss_of(m, x).backward()
    assert_same_state(eager, graphed)


@needs_cuda
def test_second_forward_before_backward_runs_eagerly(no_tf32):
    eager, graphed = pair(True)
    loss_of(graphed, torch.randn(2, 3, 32, 32, device="cuda")).backward()  # capture
    xs = [torch.randn(2, 3, 32, 32, device="cuda") for _ in range(2)]
    for m in (eager, graphed):
        m.zero_grad(set_to_none=True)
        (loss_of(m, xs[0]) + 2 * loss_of(m, xs[1])).backward()
    for (name, p), q in zip(eager.named_parameters(), graphed.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-6, msg=name)


@needs_cuda
def test_graphed_bf16_channels_last_follows_eager():
    eager, graphed = pair(True, channels_last=True)
    for step in range(3):
        x = torch.randn(2, 3, 32, 32, device="cuda").contiguous(memory_format=torch.channels_last)
        for m in (eager, graphed):
            m.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = loss_of(m, x)
            loss.backward()
        assert_same_state(eager, graphed, rtol=2e-2, atol=2e-3)
    key = next(iter(graphed.features.denseblock1.graphs.passes))
    assert torch.bfloat16 in key  # captured under autocast


@needs_cuda
def test_a_new_shape_is_captured_beside_the_old_one():
    _, graphed = pair(True)
    for size in (32, 40, 32, 48):
        loss_of(graphed, torch.randn(2, 3, size, size, device="cuda")).backward()
    passes = graphed.features.denseblock1.graphs.passes
    # 32, then 40, then 32 again (reused, now the newest), then 48: the oldest (40) is dropped
    assert [k[0][2] for k in passes] == [32 // 4, 48 // 4]


@needs_cuda
def test_cuda_graphs_on_a_frozen_block_gives_no_parameter_gradients():
    _, graphed = pair(True)
    for p in graphed.features.denseblock1.parameters():
        p.requires_grad_(False)
    loss_of(graphed, torch.randn(2, 3, 32, 32, device="cuda")).backward()
    assert all(p.grad is None for p in graphed.features.denseblock1.parameters())
    assert all(p.grad is not None for p in graphed.features.denseblock2.parameters())
