"""Each head can fit a fixed batch: the whole model learns, end to end."""
import pytest
import torch
import torch.nn.functional as F

from segdense.models import build_model


# Narrow heads keep each run to a second or two on CPU.
NARROW = {
    "fcn": dict(channels=32),
    "deeplabv3": dict(channels=32),
    "deeplabv3plus": dict(channels=32, low_level_channels=16),
    "denseaspp": dict(),
    "fpn": dict(fpn_channels=32, channels=32),
    "aux": dict(channels=32),
}


def shapes_batch():
    """Two 64x64 images: background (0), a rectangle (1) and a disc (2), each in its own colour."""
    torch.manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    mask = torch.zeros(2, 64, 64, dtype=torch.long)
    mask[0, 10:30, 12:40] = 1
    mask[0][(yy - 44) ** 2 + (xx - 40) ** 2 < 12**2] = 2
    mask[1, 34:58, 6:26] = 1
    mask[1][(yy - 20) ** 2 + (xx - 44) ** 2 < 14**2] = 2
    colours = torch.tensor([[0.1, 0.2, 0.3], [0.9, 0.1, 0.2], [0.2, 0.8, 0.6]])
    images = colours[mask].permute(0, 3, 1, 2) + 0.05 * torch.randn(2, 3, 64, 64)
    return images, mask


@pytest.mark.parametrize("head", list(NARROW))
def test_tiny_model_overfits_a_fixed_batch(head):
    images, mask = shapes_batch()
    model = build_model(
        "densenet_custom", {"name": head, **NARROW[head]}, num_classes=3, output_stride=8,
        num_units_per_block=(2, 2, 2, 2), growth_rate=8,
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    accuracy = 0.0
    for step in range(1, 301):
        model.train()
        loss = F.cross_entropy(model(images), mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 10 == 0:
            accuracy = (model.predict(images) == mask).float().mean().item()
            if accuracy >= 0.95:
                break
    assert accuracy >= 0.95, f"{head}: pixel accuracy {accuracy:.3f} after {step} steps"
