"""Run once by hand in an environment with mmsegmentation 1.2.2 (not part of the suite): checks the transcriptions
that tests/test_mmseg_transforms.py compares segdense's transforms with against mmseg/mmcv themselves.

    /path/to/mmseg-venv/bin/python tests/mmseg_transforms_check.py

mmseg's PhotoMetricDistortion is run with its numpy draws scripted to given values, on the BGR image, and compared
with segdense's on the RGB one; mmseg's RandomCrop(cat_max_ratio=0.75) is fed the offsets segdense's
CatMaxRandomCrop draws and must choose the same box; mmcv.imrescale's output sizes are compared with
``rescale_size``. A stand-in for
the compiled ``mmcv.ops`` (absent from mmcv-lite) lets mmseg import.
"""
import sys
import types
from pathlib import Path
from unittest import mock

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
_ops = types.ModuleType("mmcv.ops")
for _name in ("DeformConv2d", "ModulatedDeformConv2d", "CrissCrossAttention", "PSAMask", "point_sample",
              "sigmoid_focal_loss", "nms", "batched_nms", "MultiScaleDeformableAttention", "RoIAlign", "roi_align",
              "DeformConv2dPack", "ModulatedDeformConv2dPack", "SyncBatchNorm", "Conv2d", "carafe", "CARAFEPack",
              "SAConv2d", "ball_query", "knn"):
    setattr(_ops, _name, type(_name, (), {"__init__": lambda self, *a, **k: None}))
sys.modules["mmcv.ops"] = _ops

import mmcv  # noqa: E402
import mmseg.datasets.transforms.transforms as mmseg_transforms  # noqa: E402

from segdense.data.mmseg_transforms import CatMaxRandomCrop, PhotoMetricDistortion, rescale_size  # noqa: E402


class Scripted:
    """Stands in for ``numpy.random`` in mmseg's module: returns the given values in order."""

    def __init__(self, values):
        self.values = list(values)

    def randint(self, *args):
        return self.values.pop(0)

    uniform = randint


def check_crop() -> None:
    mask = np.zeros((40, 40), np.uint8)
    mask[:, 34:] = 1
    mask[:20, :30] = 255
    for seed in range(50):
        ours = CatMaxRandomCrop(12, 12, cat_max_ratio=0.75)
        ours.set_random_seed(seed)
        box = ours.get_params_dependent_on_data({"shape": mask.shape}, {"mask": mask})
        replay = CatMaxRandomCrop(12, 12)
        replay.set_random_seed(seed)   # the same offsets, in order, without the checks
        offsets = [replay.py_random.randint(0, 28) for _ in range(22)]
        crop = mmseg_transforms.RandomCrop((12, 12), cat_max_ratio=0.75)
        with mock.patch.object(np.random, "randint", Scripted(offsets).randint):   # mmseg's randint(0, margin + 1)
            y1, _, x1, _ = crop.crop_bbox({"img": np.zeros((40, 40, 3), np.uint8), "gt_seg_map": mask})
        assert (y1, x1) == (box["top"], box["left"]), seed


def main() -> None:
    check_crop()
    image = np.random.default_rng(7).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    for draws in ({"brightness": 31.7, "contrast_first": True, "contrast": 1.43, "saturation": 0.52, "hue": -18},
                  {"brightness": -20.2, "contrast_first": False, "contrast": 0.61, "saturation": 1.37, "hue": 17}):
        mode = 1 if draws["contrast_first"] else 0   # mmseg: mode 1 runs contrast before the HSV steps
        contrast = [1, draws["contrast"]]
        values = [1, draws["brightness"], mode] + (contrast if mode == 1 else []) + \
            [1, draws["saturation"], 1, draws["hue"]] + (contrast if mode == 0 else [])
        mmseg_transforms.random = Scripted(values)
        bgr = np.ascontiguousarray(image[:, :, ::-1])
        theirs = mmseg_transforms.PhotoMetricDistortion().transform({"img": bgr})["img"][:, :, ::-1]
        ours = PhotoMetricDistortion().apply(image, **draws)
        assert np.array_equal(ours, theirs), draws
    for height, width in ((240, 320), (300, 1500), (375, 500), (511, 97)):
        for scale in ((2048, 512), (1234, 345)):
            resized = mmcv.imrescale(np.zeros((height, width, 3), np.uint8), scale)
            assert resized.shape[:2] == rescale_size(height, width, scale), (height, width, scale)
    print("PhotoMetricDistortion, CatMaxRandomCrop and rescale_size equal mmseg's")


if __name__ == "__main__":
    main()
