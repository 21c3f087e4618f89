"""dataset=scenes: windows of large TIFF scenes read window by window, random, class-balanced and grid windows."""
import numpy as np
import pytest
import tifffile

from segdense.data import DatasetFileError, ScenesDataset, build_dataset
from segdense.data.scene_windows import grid_windows
from segdense.engine.sampler import SeededDataset, sample_seed

SIZES = {"a": (150, 200), "b": (96, 130)}


def write_scenes(root, sizes=SIZES, bands=4, num_classes=3, tile=(32, 32), compression=None, seed=0):
    """Tiled uint16 images (values 0..3999) and uint8 class-index masks (with an ignore stripe) per scene name."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    scenes = {}
    for name, (h, w) in sizes.items():
        image = rng.integers(0, 4000, (h, w, bands), dtype=np.uint16)
        mask = rng.integers(0, num_classes, (h, w), dtype=np.uint8)
        mask[:, 5] = 255
        tifffile.imwrite(root / "images" / f"{name}.tif", image, tile=tile, photometric="minisblack",
                         planarconfig="contig", compression=compression)
        tifffile.imwrite(root / "masks" / f"{name}.tif", mask, tile=tile, compression=compression)
        scenes[name] = image, mask.astype(np.int64)
    return scenes


@pytest.fixture
def scenes(tmp_path):
    return tmp_path, write_scenes(tmp_path)


def crop(scenes, dataset, index):
    scene, (y0, y1, x0, x1) = dataset.window(index)
    image, mask = scenes[dataset.files[scene][0].stem]
    return image[y0:y1, x0:x1], mask[y0:y1, x0:x1]


@pytest.mark.parametrize("sampling", ["random", "balanced", "grid"])
def test_windows_equal_the_crop_of_the_whole_scene(scenes, sampling):
    root, whole = scenes
    dataset = ScenesDataset(root, ["a", "b", "c"], split="all", sampling={"all": sampling}, patch_size=[40, 56],
                            patches_per_epoch=12, bands=[2, 0])
    for index in range(len(dataset)):
        image, mask = dataset.load_raw(index)
        want_image, want_mask = crop(whole, dataset, index)
        np.testing.assert_array_equal(image, want_image[..., [2, 0]])
        if sampling != "grid":  # grid masks: tested below
            np.testing.assert_array_equal(mask, want_mask)
        assert image.dtype == np.uint16 and mask.dtype == np.int64
    assert {dataset.load_image(i).shape for i in range(len(dataset))} == {(40, 56, 2)}


def test_only_the_tiles_a_window_touches_are_read(tmp_path, monkeypatch):
    write_scenes(tmp_path, {"a": (256, 256)}, compression="zlib")
    dataset = ScenesDataset(tmp_path, ["a", "b", "c"], sampling={"all": "random"}, patch_size=40, patches_per_epoch=8)
    source = dataset._source(dataset.files[0][0])
    real_read, reads = tifffile.FileHandle.read, []
    monkeypatch.setattr(tifffile.FileHandle, "read", lambda self, size=-1: reads.append(size) or real_read(self, size))
    for index in range(8):
        reads.clear()
        _, (y0, y1, x0, x1) = dataset.window(index)
        dataset.load_image(index)
        touched = [ty * 8 + tx for ty in range(y0 // 32, (y1 - 1) // 32 + 1)
                   for tx in range(x0 // 32, (x1 - 1) // 32 + 1)]
        assert sorted(reads) == sorted(int(source.page.databytecounts[t]) for t in touched)
        assert len(touched) <= 9  # a 40x40 window touches at most 3x3 of the scene's 8x8 tiles


@pytest.mark.parametrize("size, patch, stride", [((70, 45), (32, 32), (32, 32)), ((70, 45), (32, 20), (24, 15)),
                                                 ((20, 10), (32, 32), (32, 32)), ((64, 64), (32, 32), (32, 32))])
def test_grid_windows_are_whole_and_their_owned_parts_cover_every_pixel_once(size, patch, stride):
    pairs = grid_windows(*size, patch, stride)
    owners = np.zeros(size, int)
    for (y0, y1, x0, x1), (oy0, oy1, ox0, ox1) in pairs:
        assert (y1 - y0, x1 - x0) == (min(patch[0], size[0]), min(patch[1], size[1]))  # whole, inside the scene
        assert y0 <= oy0 < oy1 <= y1 and x0 <= ox0 < ox1 <= x1
        owners[oy0:oy1, ox0:ox1] += 1
    np.testing.assert_array_equal(owners, 1)
    starts = sorted({w[0] for w, _ in pairs}), sorted({w[2] for w, _ in pairs})
    for axis, found in enumerate(starts):  # every stride, the last one moved back to end at the edge
        want = list(range(0, max(size[axis] - patch[axis], 0), stride[axis])) + [max(size[axis] - patch[axis], 0)]
        assert found == sorted(set(want))


def test_grid_split_rebuilds_each_whole_scene_labelling_every_pixel_once(scenes):
    root, whole = scenes
    dataset = ScenesDataset(root, ["a", "b", "c"], split="all", patch_size=64, stride=48)  # "all": grid
    rebuilt = {name: np.full(mask.shape, -1) for name, (_, mask) in whole.items()}
    for index in range(len(dataset)):
        scene, (y0, y1, x0, x1) = dataset.window(index)
        name = dataset.files[scene][0].stem
        np.testing.assert_array_equal(dataset.load_image(index), whole[name][0][y0:y1, x0:x1])
        mask = dataset.load_mask(index)
        owned = (mask != 255) | (whole[name][1][y0:y1, x0:x1] == 255) & (rebuilt[name][y0:y1, x0:x1] == -1)
        assert (rebuilt[name][y0:y1, x0:x1][owned] == -1).all()  # no pixel labelled twice
        rebuilt[name][y0:y1, x0:x1][owned] = mask[owned]
    for name, (_, mask) in whole.items():
        np.testing.assert_array_equal(rebuilt[name], mask)
    assert len(dataset) == 3 * 4 + 2 * 3


def rare_class_scene(root):
    """512x512 background with 16 isolated pixels of class 1, far from the edges, and an ignored band."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    mask = np.zeros((512, 512), np.uint8)
    mask[:, :20] = 255
    rare = [(64 + 24 * i, 100 + 20 * i) for i in range(16)]
    for y, x in rare:
        mask[y, x] = 1
    tifffile.imwrite(root / "images" / "s.tif", np.zeros((512, 512), np.uint8), tile=(64, 64))
    tifffile.imwrite(root / "masks" / "s.tif", mask, tile=(64, 64))
    return mask, rare


def test_class_balanced_sampling_draws_the_rare_class_half_the_time(tmp_path):
    mask, rare = rare_class_scene(tmp_path)
    draws = 2000
    rates = {}
    for sampling in ("balanced", "random"):
        dataset = ScenesDataset(tmp_path, ["bg", "rare"], sampling={"all": sampling}, patch_size=32,
                                patches_per_epoch=draws, class_index_cell=16)
        dataset.set_random_seed(7)
        centres = [mask[w[0] + 16, w[2] + 16] for w in (dataset.window(i)[1] for i in range(draws))]
        rates[sampling] = np.mean(np.array(centres) == 1)
        assert 255 not in centres or sampling == "random"
    # two classes present: the rare one is drawn with probability 1/2 (binomial sd 0.011 for 2000 draws)
    assert abs(rates["balanced"] - 0.5) < 0.045
    assert rates["random"] < 0.005  # 16 of 262144 pixels


def test_class_index_counts_every_pixel_of_every_class(tmp_path):
    mask, _ = rare_class_scene(tmp_path)
    dataset = ScenesDataset(tmp_path, ["bg", "rare"], sampling={"all": "balanced"}, patch_size=32, class_index_cell=24)
    assert dataset.class_index.pixels.tolist() == [int((mask == 0).sum()), int((mask == 1).sum())]


def test_windows_depend_only_on_the_seed_and_the_position(scenes):
    root, _ = scenes
    make = lambda: ScenesDataset(root, ["a", "b", "c"], sampling={"all": "random"}, patch_size=32,
                                 patches_per_epoch=10, transform=lambda image, mask: (image, mask))
    first, again = SeededDataset(make()), SeededDataset(make())
    items = [(i, sample_seed(3, p)) for p, i in enumerate([4, 1, 4, 9])]
    windows = [(first[item], first.dataset.window(item[0])) for item in items]
    for item, (sample, _) in zip(reversed(items), reversed(windows)):  # another instance, another order
        image, mask = again[item]
        assert np.array_equal(image, sample[0]) and np.array_equal(mask, sample[1])
    assert windows[0][1] != windows[2][1]  # index 4 at another position of the stream: another window


def test_multilabel_masks_are_read_by_window(tmp_path):
    write_scenes(tmp_path, {"a": (80, 90)}, num_classes=2)
    mask = (np.random.default_rng(1).random((80, 90, 2)) > 0.7).astype(np.uint8)
    tifffile.imwrite(tmp_path / "masks" / "a.tif", mask, tile=(32, 32), photometric="minisblack",
                     planarconfig="contig")
    dataset = ScenesDataset(tmp_path, ["x", "y"], sampling={"all": "balanced"}, patch_size=30, multilabel=True,
                            patches_per_epoch=5)
    for index in range(5):
        _, (y0, y1, x0, x1) = dataset.window(index)
        np.testing.assert_array_equal(dataset.load_mask(index), mask[y0:y1, x0:x1])


def test_mask_of_another_size_is_one_error_naming_both_files(tmp_path):
    write_scenes(tmp_path, {"a": (80, 90)})
    tifffile.imwrite(tmp_path / "masks" / "a.tif", np.zeros((80, 88), np.uint8))
    with pytest.raises(DatasetFileError, match=r"masks/a.tif: mask is 80x88 but its image .*images/a.tif is 80x90"):
        ScenesDataset(tmp_path, ["a", "b", "c"])


def test_scene_smaller_than_the_patch_is_refused_for_random_windows(tmp_path):
    write_scenes(tmp_path, {"a": (80, 90)})
    with pytest.raises(DatasetFileError, match=r"images/a.tif: scene is 80x90, smaller than patch_size 96x96"):
        ScenesDataset(tmp_path, ["a", "b", "c"], sampling={"all": "random"}, patch_size=96)


def test_geotiff_written_by_rasterio_reads_the_same_windows(tmp_path):
    rasterio = pytest.importorskip("rasterio")
    whole = write_scenes(tmp_path, {"a": (64, 80)}, bands=3)
    image = whole["a"][0]
    profile = dict(driver="GTiff", width=80, height=64, count=3, dtype="uint16", tiled=True, blockxsize=32,
                   blockysize=32, crs="EPSG:32633", transform=rasterio.transform.from_origin(500000, 4e6, 10, 10))
    with rasterio.open(tmp_path / "images" / "a.tif", "w", **profile) as dst:
        dst.write(np.moveaxis(image, -1, 0))
    dataset = build_dataset("scenes", "all", root=tmp_path, class_names=["a", "b", "c"], patch_size=32)
    for index in range(len(dataset)):
        _, (y0, y1, x0, x1) = dataset.window(index)
        np.testing.assert_array_equal(dataset.load_image(index), image[y0:y1, x0:x1])
