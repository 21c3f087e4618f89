"""build_dataloader: training batches, eval batches of mixed sizes, seeded workers, infinite iteration."""
import itertools

import pytest
import torch
from torch.utils.data import Dataset

from segdense.data import SyntheticShapes, build_dataloader, build_transforms, infinite_batches, pad_collate
from segdense.data.loader import ShardSampler

FLIP = [{"type": "HorizontalFlip", "p": 0.5}, {"type": "Normalize"}]


class MixedSizes(Dataset):
    sizes = [(10, 12), (16, 8), (12, 12)]

    def __len__(self):
        return len(self.sizes)

    def __getitem__(self, index):
        h, w = self.sizes[index]
        return torch.full((3, h, w), float(index + 1)), torch.full((h, w), index, dtype=torch.long)


def test_training_batches_are_stacked_and_drop_the_last_partial_batch():
    loader = build_dataloader(SyntheticShapes("train", num_samples=10, image_size=32), batch_size=4, train=True)
    batches = list(loader)
    assert len(batches) == 2
    images, masks = batches[0]
    assert images.shape == (4, 3, 32, 32) and masks.shape == (4, 32, 32) and masks.dtype == torch.int64


def test_eval_collate_pads_with_ignore_and_keeps_sizes():
    images, masks, sizes = next(iter(build_dataloader(MixedSizes(), batch_size=3, train=False)))
    assert images.shape == (3, 3, 16, 12) and masks.shape == (3, 16, 12)
    assert sizes.tolist() == [[10, 12], [16, 8], [12, 12]]
    assert (masks[0, 10:] == 255).all() and (masks[0, :10] == 0).all()
    assert (masks[1, :, 8:] == 255).all() and (images[1, :, :, 8:] == 0).all() and (images[1, :, :, :8] == 2).all()


def test_eval_loader_keeps_order_and_every_sample():
    loader = build_dataloader(MixedSizes(), batch_size=2, train=False)
    assert [sizes.tolist() for _, _, sizes in loader] == [[[10, 12], [16, 8]], [[12, 12]]]


def test_same_seed_same_shuffled_batches_with_workers():
    def first_batches(seed):
        dataset = SyntheticShapes("train", num_samples=8, image_size=32, transform=build_transforms(FLIP))
        loader = build_dataloader(dataset, batch_size=2, train=True, num_workers=2, seed=seed)
        return [batch for batch in itertools.islice(iter(loader), 3)]

    first, again, other = first_batches(0), first_batches(0), first_batches(1)
    for (a_img, a_mask), (b_img, b_mask) in zip(first, again):
        assert torch.equal(a_img, b_img) and torch.equal(a_mask, b_mask)
    assert any(not torch.equal(a[0], b[0]) for a, b in zip(first, other))


def test_infinite_batches_continue_past_an_epoch():
    loader = build_dataloader(SyntheticShapes("train", num_samples=4, image_size=16), batch_size=2, train=True)
    batches = list(itertools.islice(infinite_batches(loader), 5))
    assert len(batches) == 5 and all(images.shape == (2, 3, 16, 16) for images, _ in batches)


def test_training_set_smaller_than_a_batch_is_an_error():
    with pytest.raises(ValueError, match="fewer than one batch"):
        build_dataloader(SyntheticShapes("train", num_samples=2, image_size=16), batch_size=4, train=True)


def test_pad_collate_single_size_is_a_plain_stack():
    batch = [(torch.ones(3, 4, 4), torch.zeros(4, 4, dtype=torch.long))] * 2
    images, masks, sizes = pad_collate(batch)
    assert images.shape == (2, 3, 4, 4) and (masks == 0).all() and sizes.tolist() == [[4, 4], [4, 4]]


def test_distributed_run_uses_a_distributed_sampler(tmp_path):
    import torch.distributed as dist
    from torch.utils.data import DistributedSampler

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        dataset = SyntheticShapes("train", num_samples=6, image_size=16)
        train = build_dataloader(dataset, batch_size=2, train=True)
        evaluation = build_dataloader(dataset, batch_size=2, train=False)
        assert isinstance(train.sampler, DistributedSampler) and train.sampler.shuffle
        assert isinstance(evaluation.sampler, ShardSampler) and list(evaluation.sampler) == list(range(6))
        assert len(list(infinite_batches_take(train, 4))) == 4
    finally:
        dist.destroy_process_group()


def test_shard_sampler_covers_every_sample_exactly_once():
    shards = [list(ShardSampler(7, rank, 3)) for rank in range(3)]
    assert shards == [[0, 3, 6], [1, 4], [2, 5]]


def infinite_batches_take(loader, count):
    return itertools.islice(infinite_batches(loader), count)
