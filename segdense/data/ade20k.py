"""ADE20K SceneParsing (ADEChallengeData2016): 150 classes, annotations numbered from 1 with 0 = "other objects"."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import SegmentationDataset, Transform, check_split, layout_error
from .io import IGNORE_INDEX, read_mask

# mmsegmentation's ADE20KDataset.METAINFO (mmseg 1.2.2, mmseg/datasets/ade.py), in training-index order (annotation
# value k is class k - 1). Kept exactly as mmseg spells them, including the trailing space of "bed ", so that
# checkpoints trained with mmseg carry the same names.
CLASS_NAMES = [
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed ", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path",
    "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase",
    "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track",
    "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van",
    "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel",
    "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name",
    "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce",
    "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board",
    "shower", "radiator", "glass", "clock", "flag",
]
PALETTE = [
    (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50), (4, 200, 3), (120, 120, 80), (140, 140, 140),
    (204, 5, 255), (230, 230, 230), (4, 250, 7), (224, 5, 255), (235, 255, 7), (150, 5, 61), (120, 120, 70),
    (8, 255, 51), (255, 6, 82), (143, 255, 140), (204, 255, 4), (255, 51, 7), (204, 70, 3), (0, 102, 200),
    (61, 230, 250), (255, 6, 51), (11, 102, 255), (255, 7, 71), (255, 9, 224), (9, 7, 230), (220, 220, 220),
    (255, 9, 92), (112, 9, 255), (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71), (255, 41, 10),
    (7, 255, 255), (224, 255, 8), (102, 8, 255), (255, 61, 6), (255, 194, 7), (255, 122, 8), (0, 255, 20),
    (255, 8, 41), (255, 5, 153), (6, 51, 255), (235, 12, 255), (160, 150, 20), (0, 163, 255), (140, 140, 140),
    (250, 10, 15), (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0), (153, 255, 0), (0, 0, 255), (255, 71, 0),
    (0, 235, 255), (0, 173, 255), (31, 0, 255), (11, 200, 200), (255, 82, 0), (0, 255, 245), (0, 61, 255),
    (0, 255, 112), (0, 255, 133), (255, 0, 0), (255, 163, 0), (255, 102, 0), (194, 255, 0), (0, 143, 255),
    (51, 255, 0), (0, 82, 255), (0, 255, 41), (0, 255, 173), (10, 0, 255), (173, 255, 0), (0, 255, 153), (255, 92, 0),
    (255, 0, 255), (255, 0, 245), (255, 0, 102), (255, 173, 0), (255, 0, 20), (255, 184, 184), (0, 31, 255),
    (0, 255, 61), (0, 71, 255), (255, 0, 204), (0, 255, 194), (0, 255, 82), (0, 10, 255), (0, 112, 255), (51, 0, 255),
    (0, 194, 255), (0, 122, 255), (0, 255, 163), (255, 153, 0), (0, 255, 10), (255, 112, 0), (143, 255, 0),
    (82, 0, 255), (163, 255, 0), (255, 235, 0), (8, 184, 170), (133, 0, 255), (0, 255, 92), (184, 0, 255),
    (255, 0, 31), (0, 184, 255), (0, 214, 255), (255, 0, 112), (92, 255, 0), (0, 224, 255), (112, 224, 255),
    (70, 184, 160), (163, 0, 255), (153, 0, 255), (71, 255, 0), (255, 0, 163), (255, 204, 0), (255, 0, 143),
    (0, 255, 235), (133, 255, 0), (255, 0, 235), (245, 0, 255), (255, 0, 122), (255, 245, 0), (10, 190, 212),
    (214, 255, 0), (0, 204, 255), (20, 0, 255), (255, 255, 0), (0, 153, 255), (0, 41, 255), (0, 255, 204),
    (41, 0, 255), (41, 255, 0), (173, 0, 255), (0, 245, 255), (71, 0, 255), (122, 0, 255), (0, 255, 184),
    (0, 92, 255), (184, 255, 0), (0, 133, 255), (255, 214, 0), (25, 194, 194), (102, 255, 0), (92, 0, 255),
]
NUM_CLASSES = 150
SPLITS = ("training", "validation")  # the folder names
SHORT_SPLITS = {"train": "training", "val": "validation"}  # the names every other dataset takes
LAYOUT = """\
<root>/                                    (ADEChallengeData2016/)
  images/{training,validation}/ADE_{train,val}_<8 digits>.jpg
  annotations/{training,validation}/ADE_{train,val}_<8 digits>.png
                                           values 1..150 are the classes, 0 = "other objects" (ignored)
"""


def reduce_zero_label(annotation: np.ndarray) -> np.ndarray:
    """ADE20K annotation values as training labels: 0 ("other objects") becomes 255 (ignored) and class value k
    in 1..150 becomes k - 1, as mmseg's ``reduce_zero_label=True``. 255 stays 255, as in mmseg. Every other value
    (151..254, which ADE20K does not define) is kept as it is in the file, so dataset validation and the dataset
    doctor report it by the value the file holds rather than training on it as some class."""
    annotation = np.asarray(annotation)
    classes = (annotation >= 1) & (annotation <= NUM_CLASSES)
    return np.where(annotation == 0, IGNORE_INDEX, np.where(classes, annotation - 1, annotation))


def _stems(folder: Path, suffix: str) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.glob(f"*{suffix}")) if p.is_file()}


class ADE20K(SegmentationDataset):
    """ADE20K as the SceneParsing challenge distributes it (20,210 training and 2,000 validation images).

    ``split`` is a folder name, ``training`` or ``validation``, or ``train`` / ``val`` as for the other datasets.
    Images ``images/<split>/*.jpg`` pair with annotations ``annotations/<split>/*.png`` by file stem. An image
    without an annotation, or an annotation without an image, goes to ``unpaired``: dataset validation, the
    dataset doctor and the trainer report each one by path; none is dropped silently. Labels are
    :func:`reduce_zero_label`'s (0 -> 255, k -> k - 1).
    """

    class_names = CLASS_NAMES
    palette = PALETTE

    def __init__(self, root: str | Path, split: str = "training", transform: Transform | None = None):
        super().__init__(transform)
        check_split(split, SPLITS + tuple(SHORT_SPLITS), "ADE20K")
        split = SHORT_SPLITS.get(split, split)
        self.root, self.split = Path(root), split
        image_dir, annot_dir = self.root / "images" / split, self.root / "annotations" / split
        for folder in (image_dir, annot_dir):
            if not folder.is_dir():
                raise layout_error("ADE20K", root, f"missing folder {folder.relative_to(self.root)}/", LAYOUT)
        images, annots = _stems(image_dir, ".jpg"), _stems(annot_dir, ".png")
        for stem in sorted(set(images) | set(annots)):
            if stem in images and stem in annots:
                self.files.append((images[stem], annots[stem]))
            elif stem in images:
                self.unpaired.append((images[stem], f"image has no annotation {annot_dir / (stem + '.png')}"))
            else:
                self.unpaired.append((annots[stem], f"annotation has no image {image_dir / (stem + '.jpg')}"))
        if not self.files and not self.unpaired:
            raise layout_error("ADE20K", root, f"no *.jpg images in {image_dir}", LAYOUT)

    def load_mask(self, index: int) -> np.ndarray:
        return reduce_zero_label(read_mask(self.files[index][1]))
