"""GPU behaviour: AMP (bf16 and fp16 with a scaler), channels_last, memory-efficient mode on CUDA.
Skipped where CUDA is not available."""
import pytest
import torch

from segdense import build_model
from segdense.backbones import densenet_custom

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

TINY = {"num_units_per_block": [2, 2, 2, 2], "growth_rate": 8}


def test_channels_last_matches_contiguous_on_cuda():
    torch.manual_seed(0)
    model = build_model("densenet_custom", "deeplabv3plus", num_classes=5, output_stride=8,
                        **TINY).cuda().eval()
    x = torch.randn(2, 3, 97, 131, device="cuda")
    with torch.no_grad():
        ref = model(x)
        out = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_training_runs_and_lowers_the_loss(tmp_path, amp):
    from segdense.config.train_job import train

    from train_utils import TINY as TINY_OVERRIDES, compose_config

    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    seen = {}
    cfg = compose_config(TINY_OVERRIDES + ["device=cuda", f"amp={amp}", "iterations=20", "lr=0.05"])
    train(cfg, run_dir=tmp_path, hooks=[lambda trainer, it: seen.setdefault("t", trainer)])
    trainer = seen["t"]
    assert trainer.amp_dtype == (torch.bfloat16 if amp == "bf16" else torch.float16)
    assert trainer.channels_last
    losses = trainer.loss_history
    assert sum(losses[-5:]) < sum(losses[:5])


@pytest.fixture
def no_tf32():
    """TF32 convolutions round differently in the two graphs; compare in true fp32."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_memory_efficient_gradients_equal_plain_on_cuda(no_tf32):
    torch.manual_seed(0)
    plain = densenet_custom(num_units_per_block=(3, 3, 3, 3), growth_rate=8, output_stride=8).cuda()
    efficient = densenet_custom(num_units_per_block=(3, 3, 3, 3), growth_rate=8, output_stride=8,
                                memory_efficient=True).cuda()
    efficient.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 64, 64, device="cuda")
    for m in (plain, efficient):
        m.train()
        m.forward_features(x)["block4"].square().mean().backward()
    for (name, p), q in zip(plain.named_parameters(), efficient.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-5, msg=name)
