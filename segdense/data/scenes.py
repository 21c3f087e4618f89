"""Training on scenes larger than memory: windows of large TIFFs (GeoTIFFs too), read window by window, no
pre-tiling. Random (or class-balanced) windows for training, a grid of windows that covers every pixel for
validation."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from segdense.readers import ImageReadError, select_bands

from .base import SegmentationDataset, Transform, layout_error
from .folder import index_files, named_classes, pair_files, split_names
from .io import DatasetFileError
from .multilabel_masks import check_multilabel_values
from .scene_windows import ClassIndex, Window, grid_windows, random_window, window_around
from .tiff_windows import TiffWindowError, TiffWindows

LAYOUT = """\
<root>/
  images/<name>.tif     a TIFF or GeoTIFF of any size, bands and bit depth (tiled TIFFs read fastest)
  masks/<name>.tif      same name, same height and width: one band of class indices, 255 = ignore
                        (multilabel=true: one 0/1 band per class)
  splits/<split>.txt    optional: one scene name per line (without extension); without it every pair is used
"""
TIFF_SUFFIXES = (".tif", ".tiff")
SAMPLING = ("random", "balanced", "grid")


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    pair = (int(value), int(value)) if isinstance(value, (int, np.integer)) else tuple(int(v) for v in value)
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"{name} must be a positive size or [height, width], got {value!r}")
    return pair


class ScenesDataset(SegmentationDataset):
    """Windows of large scenes (``images/<name>.tif`` with ``masks/<name>.tif``, see ``LAYOUT``), read window by
    window (:class:`~segdense.data.tiff_windows.TiffWindows`): only the tiles or strips a window touches.

    Args:
        root: folder holding ``images/`` and ``masks/`` (names changeable with ``image_dir``/``mask_dir``).
        class_names: names of the classes, index order.
        split: name of a list file ``<root>/splits/<split>.txt`` (as the folder dataset).
        sampling: per split name, ``random`` (windows uniformly in scenes drawn by area), ``balanced`` (a class
            drawn uniformly among those present, then a window centred on one of its pixels) or ``grid``; splits
            not named get ``grid``.
        patch_size: window size, one number or [height, width].
        patches_per_epoch: how many windows a random or balanced split holds (its length).
        stride: grid step, one number or [height, width], at most ``patch_size`` (default: no overlap; smaller
            overlaps). The last window of a row or column is moved back inside the scene; a grid window's mask is
            ``ignore_index`` where an earlier window holds the pixel, so validation counts every pixel once.
        class_index_cell: block side of the class index that balanced sampling draws from (one count per class
            and block, built once from the masks in one streaming pass).
        palette, bands, multilabel: as the folder dataset.

    A random window depends only on the seed last given to :meth:`set_random_seed` (the trainer gives every
    position of its sample stream its own) and the index, so a resumed run sees the same windows.
    """

    def __init__(self, root: str | Path, class_names: Sequence[str], split: str = "all",
                 sampling: Mapping[str, str] | None = None, patch_size: int | Sequence[int] = 512,
                 patches_per_epoch: int = 1000, stride: int | Sequence[int] | None = None,
                 class_index_cell: int = 32, palette: Sequence[Sequence[int]] | None = None,
                 image_dir: str = "images", mask_dir: str = "masks", bands: Sequence[int] | None = None,
                 multilabel: bool = False, transform: Transform | None = None):
        super().__init__(transform)
        self.root, self.split = Path(root), split
        self.class_names, self.palette = named_classes(class_names, palette, "ScenesDataset")
        self.bands = None if bands is None else [int(b) for b in bands]
        self.mask_task = "multilabel" if multilabel else None
        self.sampling = dict(sampling or {"train": "random"}).get(split, "grid")
        if self.sampling not in SAMPLING:
            raise ValueError(f"sampling for split {split!r} must be one of {', '.join(SAMPLING)}, "
                             f"got {self.sampling!r}")
        self.patch = _pair(patch_size, "patch_size")
        self.stride = self.patch if stride is None else _pair(stride, "stride")
        self.patches_per_epoch = int(patches_per_epoch)
        if self.patches_per_epoch < 1:
            raise ValueError(f"patches_per_epoch must be positive, got {patches_per_epoch}")
        self._find_scenes(image_dir, mask_dir)
        self.sizes = [self._check_scene(i) for i in range(len(self.files))]
        self._draw_seed = 0
        self.class_index = None
        if self.sampling == "grid":
            self.windows = [(s, *pair) for s, (h, wd) in enumerate(self.sizes)
                            for pair in grid_windows(h, wd, self.patch, self.stride)]
        elif self.sampling == "balanced" and self.files:
            strip = max(self._source(path).segment_shape[0] for _, path in self.files)
            self.class_index = ClassIndex(self._read_mask, self.sizes, self.num_classes, int(class_index_cell),
                                          multilabel, strip_rows=strip)

    def _find_scenes(self, image_dir: str, mask_dir: str) -> None:
        folders = (self.root / image_dir, self.root / mask_dir)
        for folder in folders:
            if not folder.is_dir():
                raise layout_error("scenes dataset", self.root, f"missing folder {folder.name}/", LAYOUT)
        images, masks = index_files(folders[0], TIFF_SUFFIXES), index_files(folders[1], TIFF_SUFFIXES)
        names, list_file = split_names(self.root, self.split, set(images) | set(masks), "scenes dataset", LAYOUT)
        self.files, self.unpaired = pair_files(names, images, masks, folders[0], list_file)
        if not self.files:
            raise layout_error("scenes dataset", self.root, f"no scene with both image and mask in split "
                               f"{self.split!r} ({len(self.unpaired)} unpaired)", LAYOUT)
        self._open: dict[Path, TiffWindows] = {}
        self._pid = os.getpid()

    def _check_scene(self, scene: int) -> tuple[int, int]:
        image, mask = (self._source(path) for path in self.files[scene])
        if image.shape[:2] != mask.shape[:2]:
            raise DatasetFileError(mask.path, f"mask is {mask.height}x{mask.width} but its image {image.path} is "
                                   f"{image.height}x{image.width} (height x width)")
        want = self.num_classes if self.mask_task == "multilabel" else 1
        if mask.bands != want:
            raise DatasetFileError(mask.path, f"mask has {mask.bands} band(s); expected {want} "
                                   f"({'one per class' if want > 1 else 'class indices'})")
        if self.sampling != "grid" and (image.height < self.patch[0] or image.width < self.patch[1]):
            raise DatasetFileError(image.path, f"scene is {image.height}x{image.width}, smaller than patch_size "
                                   f"{self.patch[0]}x{self.patch[1]}; give a smaller patch_size")
        return image.height, image.width

    def _source(self, path: Path) -> TiffWindows:
        """The open window reader of ``path``; each process (DataLoader worker) opens its own."""
        if self._pid != os.getpid():
            self._open, self._pid = {}, os.getpid()
        if path not in self._open:
            try:
                self._open[path] = TiffWindows(path)
            except TiffWindowError as exc:
                raise DatasetFileError(path, str(exc).removeprefix(f"{path} ")) from None
        return self._open[path]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_open": {}}

    def __len__(self) -> int:
        return len(self.windows) if self.sampling == "grid" else self.patches_per_epoch

    def set_random_seed(self, seed: int) -> None:
        """Draw the following windows from ``seed`` (with the index)."""
        self._draw_seed = int(seed)

    def window(self, index: int) -> tuple[int, Window]:
        """(scene, (y0, y1, x0, x1)) of sample ``index``."""
        if self.sampling == "grid":
            return self.windows[index][:2]
        rng = np.random.default_rng([self._draw_seed, index])
        if self.class_index is None:
            return random_window(rng, self.sizes, self.patch)
        _, scene, y, x = self.class_index.draw(rng)
        return scene, window_around(y, x, *self.sizes[scene], self.patch)

    def _read_mask(self, scene: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return self._source(self.files[scene][1]).read(y0, y1, x0, x1)

    def _image(self, scene: int, window: Window) -> np.ndarray:
        path = self.files[scene][0]
        try:
            return select_bands(self._source(path).read(*window), self.bands, path)
        except ImageReadError as exc:
            raise DatasetFileError(path, exc.problem) from None

    def _mask(self, scene: int, window: Window) -> np.ndarray:
        mask = self._read_mask(scene, *window)
        if self.mask_task == "multilabel":
            return check_multilabel_values(mask, self.files[scene][1])
        return mask[..., 0].astype(np.int64)

    def load_image(self, index: int) -> np.ndarray:
        return self._image(*self.window(index))

    def load_mask(self, index: int) -> np.ndarray:
        return self._owned(index, self._mask(*self.window(index)))

    def load_raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        scene, window = self.window(index)
        return self._image(scene, window), self._owned(index, self._mask(scene, window))

    def _owned(self, index: int, mask: np.ndarray) -> np.ndarray:
        """A grid window's mask with ``ignore_index`` where an earlier window holds the pixel (counted there)."""
        if self.sampling != "grid":
            return mask
        _, (y0, _, x0, _), (oy0, oy1, ox0, ox1) = self.windows[index]
        owned = np.full_like(mask, self.ignore_index)
        owned[oy0 - y0:oy1 - y0, ox0 - x0:ox1 - x0] = mask[oy0 - y0:oy1 - y0, ox0 - x0:ox1 - x0]
        return owned

    def describe(self, index: int) -> tuple[str, str]:
        scene, (y0, y1, x0, x1) = self.window(index)
        where = f" window [{y0}:{y1}, {x0}:{x1}]"
        return str(self.files[scene][0]) + where, str(self.files[scene][1]) + where
