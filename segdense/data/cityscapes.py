"""Cityscapes fine annotations, 19 train classes."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import SegmentationDataset, Transform, check_split, layout_error
from .io import IGNORE_INDEX, read_mask

# The official table (cityscapesScripts labels.py): (name, labelId, trainId, colour).
LABELS = [
    ("unlabeled", 0, 255, (0, 0, 0)), ("ego vehicle", 1, 255, (0, 0, 0)),
    ("rectification border", 2, 255, (0, 0, 0)), ("out of roi", 3, 255, (0, 0, 0)),
    ("static", 4, 255, (0, 0, 0)), ("dynamic", 5, 255, (111, 74, 0)), ("ground", 6, 255, (81, 0, 81)),
    ("road", 7, 0, (128, 64, 128)), ("sidewalk", 8, 1, (244, 35, 232)), ("parking", 9, 255, (250, 170, 160)),
    ("rail track", 10, 255, (230, 150, 140)), ("building", 11, 2, (70, 70, 70)), ("wall", 12, 3, (102, 102, 156)),
    ("fence", 13, 4, (190, 153, 153)), ("guard rail", 14, 255, (180, 165, 180)), ("bridge", 15, 255, (150, 100, 100)),
    ("tunnel", 16, 255, (150, 120, 90)), ("pole", 17, 5, (153, 153, 153)), ("polegroup", 18, 255, (153, 153, 153)),
    ("traffic light", 19, 6, (250, 170, 30)), ("traffic sign", 20, 7, (220, 220, 0)),
    ("vegetation", 21, 8, (107, 142, 35)), ("terrain", 22, 9, (152, 251, 152)), ("sky", 23, 10, (70, 130, 180)),
    ("person", 24, 11, (220, 20, 60)), ("rider", 25, 12, (255, 0, 0)), ("car", 26, 13, (0, 0, 142)),
    ("truck", 27, 14, (0, 0, 70)), ("bus", 28, 15, (0, 60, 100)), ("caravan", 29, 255, (0, 0, 90)),
    ("trailer", 30, 255, (0, 0, 110)), ("train", 31, 16, (0, 80, 100)), ("motorcycle", 32, 17, (0, 0, 230)),
    ("bicycle", 33, 18, (119, 11, 32)),
]
_TRAIN = sorted((train_id, name, color) for name, _, train_id, color in LABELS if train_id != 255)
CLASS_NAMES = [name for _, name, _ in _TRAIN]
PALETTE = [color for _, _, color in _TRAIN]
# labelId -> trainId for every 8-bit value; ids outside the table (and license plate, -1) become 255.
LABEL_TO_TRAIN = np.full(256, IGNORE_INDEX, dtype=np.int64)
for _name, _label_id, _train_id, _ in LABELS:
    LABEL_TO_TRAIN[_label_id] = _train_id
SPLITS = ("train", "val", "test")
LAYOUT = """\
<root>/
  leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
  gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png
                                 (and *_gtFine_labelTrainIds.png, written by tools/prepare_cityscapes.py)
"""


def label_ids_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Map Cityscapes labelIds to the 19 trainIds; every other id becomes 255."""
    label_ids = np.asarray(label_ids)
    if label_ids.min(initial=0) < 0 or label_ids.max(initial=0) > 255:
        return np.where((label_ids >= 0) & (label_ids <= 255), LABEL_TO_TRAIN[np.clip(label_ids, 0, 255)], IGNORE_INDEX)
    return LABEL_TO_TRAIN[label_ids]


class Cityscapes(SegmentationDataset):
    """Cityscapes gtFine with the 19 official train classes. Reads ``*_gtFine_labelTrainIds.png`` when present,
    else maps ``*_gtFine_labelIds.png`` through the official table on the fly."""

    class_names = CLASS_NAMES
    palette = PALETTE

    def __init__(self, root: str | Path, split: str = "train", transform: Transform | None = None):
        super().__init__(transform)
        check_split(split, SPLITS, "Cityscapes")
        self.root, self.split = Path(root), split
        image_dir, gt_dir = self.root / "leftImg8bit" / split, self.root / "gtFine" / split
        for folder in (image_dir, gt_dir):
            if not folder.is_dir():
                raise layout_error("Cityscapes", root, f"missing folder {folder.relative_to(self.root)}/", LAYOUT)
        images = sorted(image_dir.glob("*/*_leftImg8bit.png"))
        stems = {p.relative_to(image_dir).as_posix()[: -len("_leftImg8bit.png")] for p in images}
        for image in images:
            stem = image.relative_to(image_dir).as_posix()[: -len("_leftImg8bit.png")]
            mask = gt_dir / f"{stem}_gtFine_labelIds.png"
            if mask.is_file():
                self.files.append((image, mask))
            else:
                self.unpaired.append((image, f"image has no mask {mask}"))
        for mask in sorted(gt_dir.glob("*/*_gtFine_labelIds.png")):
            if mask.relative_to(gt_dir).as_posix()[: -len("_gtFine_labelIds.png")] not in stems:
                self.unpaired.append((mask, "mask has no image"))
        if not self.files and not self.unpaired:
            raise layout_error("Cityscapes", root, f"no *_leftImg8bit.png images in {image_dir}", LAYOUT)

    def load_mask(self, index: int) -> np.ndarray:
        label_ids = self.files[index][1]
        train_ids = label_ids.with_name(label_ids.name.replace("_labelIds.png", "_labelTrainIds.png"))
        if train_ids.is_file():
            return read_mask(train_ids)
        return label_ids_to_train_ids(read_mask(label_ids))
