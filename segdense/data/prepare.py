"""One-off conversions behind tools/prepare_voc_aug.py and tools/prepare_cityscapes.py."""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
from tqdm import tqdm

from segdense.errors import MissingFileError

from .cityscapes import label_ids_to_train_ids
from .io import DatasetFileError, read_mask, write_index_png
from .voc import voc_palette, voc_year_dir

SBD_LAYOUT = """\
<sbd_root>/                  (benchmark_RELEASE, from the SBD download)
  dataset/
    cls/<id>.mat             class boundaries and segmentation (struct GTcls, field Segmentation)
    train.txt, val.txt       SBD's own splits (both are used for trainaug)
"""


def _parallel(fn: Callable, items: Sequence, num_workers: int, desc: str) -> list:
    """``fn`` over ``items`` with a progress bar, in ``num_workers`` processes (inline when 1)."""
    if num_workers <= 1:
        return [fn(item) for item in tqdm(items, desc=desc, unit="file")]
    with ProcessPoolExecutor(num_workers) as pool:
        return list(tqdm(pool.map(fn, items, chunksize=16), total=len(items), desc=desc, unit="file"))


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def read_sbd_mat(path: str | Path) -> np.ndarray:
    """The class segmentation (uint8 (H, W), VOC label indices) stored in an SBD ``cls/*.mat`` file."""
    from scipy.io import loadmat  # scipy is needed only for this conversion

    try:
        data = loadmat(str(path), squeeze_me=True, struct_as_record=False)
        return np.asarray(data["GTcls"].Segmentation, dtype=np.uint8)
    except (OSError, ValueError, KeyError, AttributeError, TypeError) as exc:
        raise DatasetFileError(path, f"not an SBD class annotation ({exc.__class__.__name__}: {exc})") from None


def _convert_mat(job: tuple[Path, Path]) -> None:
    mat, png = job
    write_index_png(png, read_sbd_mat(mat), voc_palette(256))


def _copy_voc_mask(job: tuple[Path, Path]) -> None:
    src, dst = job
    write_index_png(dst, read_mask(src), voc_palette(256))


def _read_ids(path: Path) -> list[str]:
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def prepare_voc_aug(voc_root: str | Path, sbd_root: str | Path, num_workers: int | None = None) -> list[str]:
    """Write ``VOC2012/SegmentationClassAug/*.png`` and ``ImageSets/Segmentation/trainaug.txt``.

    Every SBD ``.mat`` becomes a palette PNG of VOC indices; where VOC's own annotation exists for an image in the
    list it is used instead (it marks object borders 255, SBD does not). trainaug = VOC train ∪ SBD train ∪ SBD
    val, minus every VOC val image (10,582 ids for the full datasets). Returns the trainaug ids.
    """
    base = voc_year_dir(voc_root)
    sbd = Path(sbd_root)
    if not (sbd / "cls").is_dir() and (sbd / "dataset" / "cls").is_dir():
        sbd = sbd / "dataset"
    if not (sbd / "cls").is_dir():
        raise MissingFileError(f"SBD root {str(sbd_root)!r}: no dataset/cls/ folder.\nExpected layout:\n{SBD_LAYOUT}")
    lists = base / "ImageSets" / "Segmentation"
    for name in ("train.txt", "val.txt"):
        if not (lists / name).is_file():
            raise MissingFileError(f"VOC split list {lists / name} does not exist")
    sbd_ids = [i for name in ("train.txt", "val.txt") if (sbd / name).is_file() for i in _read_ids(sbd / name)]
    mats = sorted((sbd / "cls").glob("*.mat"))
    if not sbd_ids:  # without SBD's lists, every converted annotation counts
        sbd_ids = [m.stem for m in mats]
    val = set(_read_ids(lists / "val.txt"))
    trainaug = sorted((set(_read_ids(lists / "train.txt")) | set(sbd_ids)) - val)

    out = base / "SegmentationClassAug"
    out.mkdir(exist_ok=True)
    workers = default_workers() if num_workers is None else num_workers
    _parallel(_convert_mat, [(m, out / f"{m.stem}.png") for m in mats], workers, "SBD .mat -> PNG")
    voc_masks = [(base / "SegmentationClass" / f"{i}.png", out / f"{i}.png") for i in trainaug
                 if (base / "SegmentationClass" / f"{i}.png").is_file()]
    _parallel(_copy_voc_mask, voc_masks, workers, "VOC masks")
    missing = [i for i in trainaug if not (out / f"{i}.png").is_file()]
    if missing:
        raise MissingFileError(f"{len(missing)} trainaug images have no annotation in SBD or VOC, e.g. {missing[:5]}")
    (lists / "trainaug.txt").write_text("".join(f"{i}\n" for i in trainaug))
    return trainaug


def _write_train_ids(path: Path) -> Path:
    target = path.with_name(path.name.replace("_labelIds.png", "_labelTrainIds.png"))
    write_index_png(target, label_ids_to_train_ids(read_mask(path)))
    return target


def prepare_cityscapes(root: str | Path, splits: Iterable[str] = ("train", "val", "test"),
                       num_workers: int | None = None) -> int:
    """Write ``*_gtFine_labelTrainIds.png`` next to every ``*_gtFine_labelIds.png``; returns how many."""
    gt = Path(root) / "gtFine"
    if not gt.is_dir():
        raise MissingFileError(f"Cityscapes root {str(root)!r}: no gtFine/ folder (expected "
                                "gtFine/{split}/{city}/*_gtFine_labelIds.png)")
    files = sorted(p for split in splits for p in (gt / split).glob("*/*_gtFine_labelIds.png"))
    workers = default_workers() if num_workers is None else num_workers
    _parallel(_write_train_ids, files, workers, "labelIds -> labelTrainIds")
    return len(files)


__all__ = ["prepare_cityscapes", "prepare_voc_aug", "read_sbd_mat"]
