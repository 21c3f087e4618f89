"""``check_job(cfg)`` for tools/check_dataset.py: today's file checks plus the dataset doctor, per split."""
from __future__ import annotations

import sys

from omegaconf import DictConfig, OmegaConf

from segdense.data import build_dataset, validate_dataset
from segdense.data.band_statistics import band_statistics
from segdense.data.doctor import diagnose, format_frequencies, inspect_split
from segdense.data.validate import sample_indices
from segdense.reports.dataset import check_report_dir, write_dataset_report


def check_job(cfg: DictConfig) -> int:
    """Check the configured dataset's splits, print the diagnosis and write the report; the exit status (0 clean,
    1 problems found, 2 the dataset cannot be opened)."""
    spec = OmegaConf.to_container(cfg.dataset, resolve=True)
    name = spec.pop("name")
    train_split, val_split = spec.pop("train_split"), spec.pop("val_split")
    spec.pop("normalize", None)
    splits = [cfg.split] if cfg.get("split") else list(dict.fromkeys(cfg.get("splits") or [train_split, val_split]))
    sample = None if cfg.get("full", False) else int(cfg.get("sample", 64))
    seed = int(cfg.get("seed", 0))
    report_dir = cfg.get("report_dir", "dataset_report")
    if report_dir and not report_dir_free(report_dir):
        return 2
    diagnoses, checks, palette, ok, images = [], [], [], True, None
    for split in splits:
        try:
            dataset = build_dataset(name, split=split, **spec)
        except (FileNotFoundError, ValueError, TypeError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        palette = dataset.palette
        print(f"{name} split {split!r}: {dataset!r}")
        report = validate_dataset(dataset, sample=sample, seed=seed)
        print(report.format())
        ok &= report.ok
        checks += [f"{split}: {error}" for error in report.errors]
        diagnoses.append(inspect_split(dataset, split, sample_indices(len(dataset), sample, seed)))
        if images is None:  # the first (training) split, every image, in one pass
            images = band_statistics(dataset, range(len(dataset)), seed)
    findings = diagnose(diagnoses, diagnoses[0].statistics.class_names, palette)
    print("\nclass frequencies (share of labelled pixels; images holding the class):")
    print(format_frequencies(diagnoses))
    print("\ndiagnosis:" if findings else "\ndiagnosis: no mask-encoding problem found")
    for f in findings:
        print(f"  {f.severity.upper()} [{f.split}] {f.message}\n    fix: {f.fix}")
    ok &= not any(f.severity == "error" for f in findings)
    print_band_statistics(images, splits[0])
    train = diagnoses[0].statistics
    weights = train.class_weights() if train.pixels.sum() > 0 else None
    note = f"{train.num_images} {diagnoses[0].split} masks" + (" sampled" if sample is not None and
                                                                train.num_images < diagnoses[0].num_samples else "")
    named = sorted(getattr(dataset, "named_class_weights", {}))
    published = "".join(f", or loss.class_weight={n} (published)" for n in named)
    if weights is not None:
        print(f"\nsuggested class weights (median frequency over {note}): "
              f"loss.class_weight=[{','.join(f'{w:g}' for w in weights)}]  (or loss.class_weight=auto{published})")
    if report_dir:
        path = write_dataset_report(report_dir, name, diagnoses, findings, weights, f"over {note}", checks)
        print(f"report: {path}")
    return 0 if ok else 1


def report_dir_free(report_dir) -> bool:
    """Whether the report can be written there; says why not on stderr."""
    try:
        check_report_dir(report_dir)
    except FileExistsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return False
    return True


def print_band_statistics(stats, split: str) -> None:
    """The images' findings and the per-band statistics of ``split``, as config lines to paste."""
    if stats is None or stats.bands is None:
        return
    for kind, seen, fix in stats.findings():
        print(f"  WARNING [{split}] {seen}\n    fix: {fix}")
    print(f"\nper-band statistics of the {stats.images} {split} image(s) ({stats.bands} band(s); mean/std over "
          "every pixel, percentiles over a sample); paste into the dataset config:")
    for line in stats.config_lines():
        print(f"  {line}")
