"""Write Cityscapes *_gtFine_labelTrainIds.png (19 train classes, others 255) next to every *_labelIds.png.

    python tools/prepare_cityscapes.py data/cityscapes [--workers 8]

Optional: without these files segdense maps labelIds on the fly (same result, a little slower).
"""
import argparse
import sys

from segdense.data.prepare import prepare_cityscapes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", help="Cityscapes root holding gtFine/ and leftImg8bit/")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: CPU count, at most 8)")
    args = parser.parse_args(argv)
    try:
        count = prepare_cityscapes(args.root, num_workers=args.workers)
    except (FileNotFoundError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {count} *_gtFine_labelTrainIds.png files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
