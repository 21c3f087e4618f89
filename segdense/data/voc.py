"""Pascal VOC 2012 segmentation, with the SBD "trainaug" split (10,582 images)."""
from __future__ import annotations

from pathlib import Path

from .base import SegmentationDataset, Transform, check_split, layout_error, read_split_list

CLASS_NAMES = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor"]


def voc_palette(n: int = 256) -> list[tuple[int, int, int]]:
    """The VOC colour map: the colour of label ``i`` spreads the bits of ``i`` over R, G and B."""
    palette = []
    for label in range(n):
        r = g = b = 0
        c = label
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette.append((r, g, b))
    return palette


PALETTE = voc_palette(21)
SPLITS = ("train", "val", "trainval", "trainaug")
LAYOUT = """\
<root>/                      (the folder holding VOC2012/, usually VOCdevkit)
  VOC2012/
    JPEGImages/<id>.jpg
    SegmentationClass/<id>.png        palette PNGs: indices are labels, 255 on object borders
    SegmentationClassAug/<id>.png     only for split trainaug (tools/prepare_voc_aug.py writes it)
    ImageSets/Segmentation/{train,val,trainval,trainaug}.txt   one image id per line
"""


def voc_year_dir(root: str | Path) -> Path:
    """``root/VOC2012``, accepting either VOCdevkit or VOC2012 itself as ``root``."""
    root = Path(root)
    if (root / "VOC2012").is_dir():
        return root / "VOC2012"
    if (root / "JPEGImages").is_dir() and root.name == "VOC2012":
        return root
    raise layout_error("VOC", root, "no VOC2012/ folder in it" if root.is_dir() else "the folder does not exist",
                       LAYOUT)


class VOCSegmentation(SegmentationDataset):
    """Pascal VOC 2012 (21 classes). ``split``: train, val, trainval, or trainaug (SBD augmented, 10,582 images,
    masks from ``SegmentationClassAug``). Masks are read as palette indices, never as colours."""

    class_names = CLASS_NAMES
    palette = PALETTE

    def __init__(self, root: str | Path, split: str = "train", transform: Transform | None = None):
        super().__init__(transform)
        check_split(split, SPLITS, "VOC")
        self.root, self.split = Path(root), split
        base = voc_year_dir(root)
        for sub in ("JPEGImages", "ImageSets/Segmentation"):
            if not (base / sub).is_dir():
                raise layout_error("VOC", root, f"missing folder {sub}/ in {base}", LAYOUT)
        mask_dir = base / ("SegmentationClassAug" if split == "trainaug" else "SegmentationClass")
        if not mask_dir.is_dir():
            hint = " (run tools/prepare_voc_aug.py to create it)" if split == "trainaug" else ""
            raise layout_error("VOC", root, f"missing folder {mask_dir.name}/ in {base}{hint}", LAYOUT)
        ids = read_split_list(base / "ImageSets/Segmentation" / f"{split}.txt", "VOC", root, LAYOUT)
        for image_id in ids:
            image, mask = base / "JPEGImages" / f"{image_id}.jpg", mask_dir / f"{image_id}.png"
            if not image.is_file():
                self.unpaired.append((image, f"image listed in {split}.txt does not exist"))
            elif not mask.is_file():
                self.unpaired.append((mask, f"mask of image {image} does not exist"))
            else:
                self.files.append((image, mask))
