"""Check a dataset before training: unreadable files, size mismatches, out-of-range labels, unpaired files,
and the pixel frequency of every class. Exits 1 when it finds errors, 2 when the dataset cannot be opened.

    python tools/check_dataset.py dataset=voc dataset.root=/data/VOCdevkit
    python tools/check_dataset.py dataset=cityscapes dataset.root=/data/cityscapes +split=val +full=true

``+split`` (default: the dataset's train split), ``+full=true`` checks every sample instead of ``+sample=64``
drawn with ``seed``.
"""
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segdense.config.schema import register_schema  # noqa: E402
from segdense.data import build_dataset, validate_dataset  # noqa: E402

register_schema()


def check(cfg: DictConfig) -> int:
    """Build the configured dataset split, validate it, print the report; the exit status."""
    spec = OmegaConf.to_container(cfg.dataset, resolve=True)
    split = cfg.get("split") or spec["train_split"]
    sample = None if cfg.get("full", False) else int(cfg.get("sample", 64))
    try:
        dataset = build_dataset(split=split, **spec)
    except (FileNotFoundError, ValueError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{spec['name']} split {split!r}: {dataset!r}")
    report = validate_dataset(dataset, sample=sample, seed=int(cfg.get("seed", 0)))
    print(report.format())
    return 0 if report.ok else 1


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    sys.exit(check(cfg))


if __name__ == "__main__":
    # A check writes nothing: no Hydra output folder or log files.
    for override in ("hydra.run.dir=.", "hydra.output_subdir=null", "hydra/job_logging=none",
                     "hydra/hydra_logging=none"):
        if not any(arg.startswith(override.split("=")[0] + "=") for arg in sys.argv[1:]):
            sys.argv.append(override)
    main()
