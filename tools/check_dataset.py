"""Check a dataset before training, and diagnose its masks. Exits 1 when it finds problems, 2 when the dataset
cannot be opened.

    python tools/check_dataset.py dataset=voc dataset.root=/data/VOCdevkit
    python tools/check_dataset.py dataset=folder dataset.root=data/mine dataset.class_names=[bg,cat] +full=true

Today's checks (unreadable files, size mismatches, out-of-range labels, unpaired files) and the doctor: 0/255 binary
masks, RGB-coded masks, values outside the classes, classes that never occur in a split, a zero label that looks
like "unlabelled", each with the fix to pass; per-class pixel and image frequencies of every split and suggested
class weights. Writes ``dataset_report/report.md`` and ``class_frequency.png`` (``+report_dir=DIR``,
``+report_dir=null`` for none). ``+splits=[train,val]`` (default: the dataset's train and val splits;
``+split=NAME`` one split), ``+full=true`` reads every sample instead of ``+sample=64`` drawn with ``seed``.
"""
import sys

import hydra
from omegaconf import DictConfig

from segdense.config.check_job import check_job
from segdense.config.schema import register_schema

register_schema()


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    sys.exit(check_job(cfg))


if __name__ == "__main__":
    # No Hydra output folder or log files: the report is the only output.
    for override in ("hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=none",
                     "hydra/hydra_logging=none"):
        if not any(arg.startswith(override.split("=")[0] + "=") for arg in sys.argv[1:]):
            sys.argv.append(override)
    main()
