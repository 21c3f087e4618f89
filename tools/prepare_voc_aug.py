"""Build VOC 2012's SBD "trainaug" split (10,582 images): convert SBD's .mat annotations to PNGs.

    python tools/prepare_voc_aug.py data/VOCdevkit data/benchmark_RELEASE [--workers 8]

Writes VOC2012/SegmentationClassAug/*.png and VOC2012/ImageSets/Segmentation/trainaug.txt (every VOC val image
excluded). Needs scipy (pip install segdense[voc_aug]).
"""
import argparse
import sys

from segdense.data.prepare import prepare_voc_aug


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("voc_root", help="folder holding VOC2012/ (usually VOCdevkit)")
    parser.add_argument("sbd_root", help="SBD's benchmark_RELEASE folder (holding dataset/cls/*.mat)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: CPU count, at most 8)")
    args = parser.parse_args(argv)
    try:
        ids = prepare_voc_aug(args.voc_root, args.sbd_root, num_workers=args.workers)
    except (FileNotFoundError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"trainaug: {len(ids)} images listed in ImageSets/Segmentation/trainaug.txt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
