"""segdense.tasks.class_argmax (the multiclass task's labels, streamed scenes, SegmentationModel.predict) against
torch.argmax, the reference: same index on random logits, ties, NaN, every layout and dtype users hand it."""
import pytest
import torch

from segdense.tasks import build_task, class_argmax


def logits(shape, dtype=torch.float32, seed=0, ties=False):
    generator = torch.Generator().manual_seed(seed)
    values = torch.randint(-3, 4, shape, generator=generator) if ties else torch.randn(shape, generator=generator)
    return values.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("classes", [1, 2, 19, 300])
@pytest.mark.parametrize("ties", [False, True])
def test_equals_torch_argmax_over_the_class_dimension(dtype, classes, ties):
    x = logits((2, classes, 9, 13), dtype, ties=ties)
    assert torch.equal(class_argmax(x, 1), x.argmax(1))
    assert torch.equal(class_argmax(x[0], 0), x[0].argmax(0))
    assert class_argmax(x, 1).dtype == torch.int64


@pytest.mark.parametrize("layout", ["channels_last", "sliced", "transposed"])
def test_equals_torch_argmax_on_strided_layouts(layout):
    x = logits((2, 5, 12, 16), ties=True)
    x = {"channels_last": x.contiguous(memory_format=torch.channels_last), "sliced": x[:, :, ::2, 3:],
         "transposed": x.transpose(2, 3)}[layout]
    assert torch.equal(class_argmax(x, 1), x.argmax(1))


def test_nan_counts_as_the_largest_value_as_in_torch():
    x = logits((1, 4, 6, 7))
    x[0, 2, 1, 1] = x[0, 1, 3, 2] = x[0, 3, 3, 2] = float("nan")
    assert torch.equal(class_argmax(x, 1), x.argmax(1))
    assert class_argmax(x, 1)[0, 1, 1] == 2 and class_argmax(x, 1)[0, 3, 2] == 1


def test_the_multiclass_task_labels_with_it():
    x = logits((2, 6, 8, 8), ties=True)
    assert torch.equal(build_task("multiclass", class_names=list("abcdef")).labels(x), x.argmax(1))
