"""Write a training run's report: ``python tools/report.py RUN_DIR``.

Writes RUN_DIR/report.html (and RUN_DIR/report/*.png) from the run's metrics.json and TensorBoard events: loss terms
and lr, validation mIoU/mAcc/aAcc against iteration, per-class IoU at the best checkpoint, validation predictions.
Training writes the same report when it ends; this remakes it, e.g. for a run still going or an older run.
"""
import argparse
import sys

from segdense.reports.training import write_training_report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a training run directory (holding metrics.json)")
    args = parser.parse_args(argv)
    try:
        path = write_training_report(args.run_dir)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
