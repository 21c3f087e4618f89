"""Memory-efficient dense blocks under SyncBatchNorm: statistics all-reduced across processes
(gloo on CPU, where PyTorch's own SyncBatchNorm cannot run) give what one process computes on the
whole batch."""
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from segdense.backbones import densenet_custom
from segdense.backbones.efficient_block import sync_dense_layer_norms


def _block(seed, sync, fused=False, frozen=False):
    torch.manual_seed(seed)
    net = densenet_custom(num_units_per_block=(3,), growth_rate=4, num_init_features=6, memory_efficient=True)
    block = net.features.denseblock1
    if sync == "SyncBatchNorm":
        block = torch.nn.SyncBatchNorm.convert_sync_batchnorm(block)
    elif sync == "DenseSyncBatchNorm":  # what the trainer uses on CPU, where DDP refuses SyncBatchNorm
        block = sync_dense_layer_norms(block)
    for m in block.modules():  # non-trivial affine parameters
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 1.5)
    block.fused = fused  # Triton kernels (the interpreter on CPU, set by conftest)
    block.double().train()
    if frozen:  # frozen-BN fine-tuning inside a synced block: running statistics, no all-reduce, no update
        block.denselayer2.norm1.eval(), block.denselayer1.norm2.eval()
    return block


def _loss(out, total):
    w = torch.linspace(-1, 1, out.shape[1], dtype=out.dtype).view(1, -1, 1, 1)
    return (out * w).square().sum() / total


def _step(block, x, total):
    x = x.clone().requires_grad_()
    out = block(x)
    _loss(out, total).backward()
    return out.detach(), x.grad


def _worker(rank, world, init_file, x, cases):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        for kind, fused, frozen in cases:
            _check_synced_block(rank, world, x, kind, fused, frozen)
    finally:
        dist.destroy_process_group()


def _check_synced_block(rank, world, x, kind, fused, frozen):
    half = x.shape[0] // world
    mine = x[rank * half:(rank + 1) * half]
    ref = _block(0, sync=None, frozen=frozen)
    ref_out, ref_gx = _step(ref, x, x.shape[0])
    blk = _block(0, sync=kind, fused=fused, frozen=frozen)
    frozen_stats = blk.denselayer2.norm1.running_mean.clone()
    out, gx = _step(blk, mine, x.shape[0])
    assert "EfficientDenseBlock" in type(blk(mine.clone().requires_grad_()).grad_fn).__name__
    # Gradients summed over processes (DDP would average a mean loss; here the loss is already
    # divided by the global batch).
    for p in blk.parameters():
        dist.all_reduce(p.grad)
    # The Triton kernels compute in float32, PyTorch's ops here in float64.
    rtol, atol = (1e-4, 1e-6) if fused else (1e-9, 1e-12)
    case = f"{kind}, fused={fused}, frozen={frozen}"
    torch.testing.assert_close(out, ref_out[rank * half:(rank + 1) * half], rtol=rtol, atol=atol, msg=case)
    torch.testing.assert_close(gx, ref_gx[rank * half:(rank + 1) * half], rtol=rtol, atol=atol, msg=case)
    for (name, p), q in zip(ref.named_parameters(), blk.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=rtol, atol=atol, msg=f"{case}: gradient of {name}")
    # The block ran a second forward above (the grad_fn check): compare buffers after one more
    # reference forward, so both sides have taken two training steps' statistics.
    ref(x.clone().requires_grad_())
    for (name, b), c in zip(ref.named_buffers(), blk.buffers()):
        torch.testing.assert_close(c, b, rtol=rtol, atol=atol, msg=f"{case}: buffer {name}")
    assert blk.denselayer3.norm1.num_batches_tracked.item() == 2, case
    if frozen:  # a BatchNorm in eval mode inside the synced block: running statistics used, none updated
        assert torch.equal(blk.denselayer2.norm1.running_mean, frozen_stats), case


def test_synced_statistics_on_half_batches_equal_one_process_on_the_whole_batch(tmp_path):
    # PyTorch's SyncBatchNorm and the trainer's DenseSyncBatchNorm (PyTorch's ops, then the Triton kernels, then
    # with frozen BatchNorms) one after another in one pair of processes: starting them costs more than the checks.
    torch.manual_seed(5)
    x = torch.randn(4, 6, 8, 8, dtype=torch.float64) * 2 + 0.5
    cases = [("SyncBatchNorm", False, False), ("DenseSyncBatchNorm", False, False), ("DenseSyncBatchNorm", True, False),
             ("DenseSyncBatchNorm", False, True)]
    mp.spawn(_worker, args=(2, str(tmp_path / "rendezvous"), x, cases), nprocs=2, join=True)


def test_local_statistics_differ_from_the_whole_batch():
    """The check above can fail: without synchronisation, half-batch statistics give other outputs."""
    torch.manual_seed(5)
    x = torch.randn(4, 6, 8, 8, dtype=torch.float64) * 2 + 0.5
    ref_out, _ = _step(_block(0, sync=None), x, 4)
    half_out, _ = _step(_block(0, sync=None), x[:2], 4)
    assert (half_out - ref_out[:2]).abs().max() > 1e-3


def test_synced_layers_keep_the_state_dict_keys_and_values():
    plain = densenet_custom(num_units_per_block=(2, 2), growth_rate=4, memory_efficient=True)
    synced = sync_dense_layer_norms(densenet_custom(num_units_per_block=(2, 2), growth_rate=4, memory_efficient=True))
    synced.load_state_dict(plain.state_dict())  # strict: same keys, same shapes
    assert list(synced.state_dict()) == list(plain.state_dict())
    assert type(synced.features.denseblock1.denselayer1.norm1).__name__ == "DenseSyncBatchNorm"
    assert type(synced.features.transition1.norm) is torch.nn.BatchNorm2d  # only dense layers change
    plain.eval(), synced.eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(synced(x), plain(x))  # eval: plain BatchNorm behaviour
