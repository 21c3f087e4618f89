"""Train several configurations through the real trainer and compare val mIoU at equal iterations
and at equal training time; writes comparison.json, comparison.md and comparison.png.

    python tools/compare.py --out compare_out \\
        --common dataset=synthetic_hard iterations=1000 batch_size=16 val_interval=100 \\
        --run "densenet: backbone=densenet121" \\
        --run "resnet50 os8: backbone=resnet50 head=deeplabv3 output_stride=8"

Each ``--run`` is ``"name: override ..."`` (Hydra overrides, as tools/train.py takes them); runs
train one after another into ``OUT/runs/<name>``; a finished run of the same overrides is read back, not
retrained (add runs to a comparison that way), and one of other overrides under that name is an error.
"""
import argparse
import logging
import sys
from pathlib import Path

from segdense.config.compare_job import compare
from segdense.errors import ConfigError

CONF = Path(__file__).resolve().parents[1] / "conf"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", required=True, help='"name: override ...", repeat per configuration')
    parser.add_argument("--common", nargs="*", default=[], help="overrides applied to every run, before its own")
    parser.add_argument("--out", required=True, help="output folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        report = compare(CONF, args.run, args.out, common=args.common)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print((Path(args.out) / "comparison.md").read_text())
    return 0 if report["runs"] else 1


if __name__ == "__main__":
    sys.exit(main())
