"""A user's own data: ``images/`` and ``masks/`` with matching file stems."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .base import SegmentationDataset, Transform, layout_error, read_split_list
from .io import IGNORE_INDEX, IMAGE_EXTENSIONS, read_mask
from .multilabel_masks import ARRAY_SUFFIXES, read_multilabel_mask
from .voc import voc_palette

LAYOUT = """\
<root>/
  images/<name>.{jpg,png,tif,npy,...}  PNG/JPEG/BMP/WebP, TIFF (any bands and bit depth) or .npy; sub-folders allowed
  masks/<name>.png               same relative name, single-channel or palette PNG of class indices
                                 (or RGB-coded with mask_colors given), 255 = ignore
  splits/<split>.txt             optional: one name per line (without extension); without it every pair is used
multilabel=true: masks/<name>.{tif,tiff,npy} with one 0/1 band per class, (H, W, C) or (C, H, W), 255 = ignore;
                 or masks/<class name>/<name>.png, one 0/1 PNG per class
"""


def index_files(folder: Path, suffixes: Sequence[str] = IMAGE_EXTENSIONS) -> dict[str, Path]:
    """Files of ``folder`` (and its sub-folders) with one of ``suffixes``, by relative path without extension."""
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix.lower() in suffixes:
            files[path.relative_to(folder).with_suffix("").as_posix()] = path
    return files


def split_names(root: Path, split: str, available: set[str], dataset: str, layout: str) -> tuple[list[str], Path]:
    """The names of ``split``: the lines of ``<root>/splits/<split>.txt``, or every name in ``available`` for split
    ``all`` without a list file (or without a ``splits/`` folder); and the list file's path."""
    list_file = root / "splits" / f"{split}.txt"
    if list_file.is_file() or (split != "all" and (root / "splits").is_dir()):
        return read_split_list(list_file, dataset, root, layout), list_file
    if split == "all":
        return sorted(available), list_file
    raise layout_error(dataset, root, f"split {split!r} needs the list file {list_file}", layout)


def pair_files(names: Sequence[str], images: dict, masks: dict, image_folder: Path, list_file: Path,
               ) -> tuple[list[tuple], list[tuple[Path, str]]]:
    """(pairs, unpaired): the (image, mask) of every name found in both, and each other name with what is
    missing."""
    pairs, unpaired = [], []
    for name in names:
        if name in images and name in masks:
            pairs.append((images[name], masks[name]))
        elif name in images:
            unpaired.append((images[name], "image has no mask"))
        elif name in masks:
            unpaired.append((masks[name], "mask has no image"))
        else:
            unpaired.append((image_folder / name, f"listed in {list_file.name} but neither image nor mask exists"))
    return pairs, unpaired


def _multilabel_index(folder: Path, class_names: Sequence[str]) -> dict[str, Path | list[Path]]:
    """Multilabel masks by name: ``<name>.{tif,tiff,npy}`` files, or for names found in every class folder
    ``<class>/<name>.png``, the class PNGs in class order."""
    files: dict[str, Path | list[Path]] = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix.lower() in ARRAY_SUFFIXES:
            files[path.relative_to(folder).with_suffix("").as_posix()] = path
    per_class = [index_files(folder / name) if (folder / name).is_dir() else {} for name in class_names]
    for name in set.intersection(*(set(index) for index in per_class)) if per_class else ():
        files.setdefault(name, [index[name] for index in per_class])
    return files


def named_classes(class_names: Sequence[str], palette: Sequence[Sequence[int]] | None, dataset: str,
                  ) -> tuple[list[str], list[tuple[int, ...]]]:
    """The class names as strings and a colour per class (default: the VOC colour map), checked."""
    if not class_names:
        raise ValueError(f"{dataset} needs class_names (the name of every class, in index order)")
    names = [str(name) for name in class_names]
    colours = [tuple(int(c) for c in color) for color in (palette or voc_palette(len(names)))]
    if len(colours) < len(names):
        raise ValueError(f"palette has {len(colours)} colours for {len(names)} classes")
    return names, colours


class FolderDataset(SegmentationDataset):
    """Images and masks in two folders, paired by relative path without extension.

    Args:
        root: folder holding ``images/`` and ``masks/`` (names changeable with ``image_dir``/``mask_dir``).
        split: name of a list file ``<root>/splits/<split>.txt``; if that file is missing and ``split`` is
            ``all`` (or the ``splits/`` folder does not exist) every pair is used.
        class_names: names of the classes, index order.
        palette: colours to draw the classes with (default: the VOC colour map).
        mask_colors: for RGB-coded masks, the RGB colour of every class in index order; other colours are ignored.
            ``[[0,0,0],[255,255,255]]`` also reads 0/255 binary masks as classes 0 and 1.
        reduce_zero_label: masks number the classes from 1 and use 0 for "unlabelled" (ADE20K's convention):
            0 becomes 255 (ignored) and every other value v becomes v - 1.
        bands: which bands of every image, in which order (0-based; default all). The model's ``in_channels``
            follows from it.
        layout: ``HWC`` or ``CHW`` for ``.npy``/TIFF arrays whose shape leaves the band axis open (default: as
            the file says, else detected from the shape; an ambiguous shape is an error asking for it).
        multilabel: masks with one 0/1 band per class (``task=multilabel``): a C-band TIFF or ``.npy`` per image,
            or one PNG per class in ``masks/<class name>/`` (see ``LAYOUT``).
    """

    def __init__(self, root: str | Path, class_names: Sequence[str], split: str = "all",
                 palette: Sequence[Sequence[int]] | None = None, mask_colors: Sequence[Sequence[int]] | None = None,
                 image_dir: str = "images", mask_dir: str = "masks", reduce_zero_label: bool = False,
                 bands: Sequence[int] | None = None, layout: str | None = None,
                 multilabel: bool = False, transform: Transform | None = None):
        super().__init__(transform)
        self.bands = None if bands is None else [int(b) for b in bands]
        self.layout = layout
        self.mask_task = "multilabel" if multilabel else None
        self.reduce_zero_label = bool(reduce_zero_label)
        self.root, self.split = Path(root), split
        self.class_names, self.palette = named_classes(class_names, palette, "FolderDataset")
        if mask_colors is not None and len(mask_colors) != self.num_classes:
            raise ValueError(f"mask_colors must give one RGB colour per class ({self.num_classes}), "
                             f"got {len(mask_colors)}")
        self.mask_colors = None if mask_colors is None else [tuple(int(c) for c in color) for color in mask_colors]
        folders = (self.root / image_dir, self.root / mask_dir)
        for folder in folders:
            if not folder.is_dir():
                raise layout_error("folder dataset", root, f"missing folder {folder.name}/", LAYOUT)
        images = index_files(folders[0])
        masks = _multilabel_index(folders[1], self.class_names) if multilabel else index_files(folders[1])
        names, list_file = split_names(self.root, split, set(images) | set(masks), "folder dataset", LAYOUT)
        self.files, self.unpaired = pair_files(names, images, masks, folders[0], list_file)
        if not self.files and not self.unpaired:
            raise layout_error("folder dataset", root, f"no images found in {folders[0]}", LAYOUT)

    def load_mask(self, index: int) -> np.ndarray:
        if self.mask_task == "multilabel":
            return read_multilabel_mask(self.files[index][1], self.num_classes)
        mask = read_mask(self.files[index][1], colors=self.mask_colors)
        if self.reduce_zero_label:
            mask = np.where((mask == 0) | (mask == IGNORE_INDEX), IGNORE_INDEX, mask - 1)
        return mask
