"""The dataset doctor's report: ``report.md`` and ``class_frequency.png``."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from segdense.data.doctor import Finding, SplitDiagnosis, format_frequencies

from .plots import class_frequency_chart

TITLE = "# Dataset report"
CHART = "class_frequency.png"


def check_report_dir(directory: str | os.PathLike) -> Path:
    """``directory`` if writing the report there replaces nothing but an earlier dataset report."""
    directory = Path(directory)
    md = directory / "report.md"
    if md.exists() and not md.read_text(errors="replace").startswith(TITLE):
        raise FileExistsError(f"{md} exists and is not a dataset report; choose another +report_dir=DIR "
                              "(nothing was overwritten)")
    return directory


def write_dataset_report(directory: str | os.PathLike, dataset_name: str, splits: Sequence[SplitDiagnosis],
                         findings: Sequence[Finding], class_weight: list[float] | None, weight_note: str,
                         checks: Sequence[str] = ()) -> Path:
    """Write ``report.md`` (findings with fixes, frequency table, suggested class weights, today's checks) and the
    bar chart beside it; returns the markdown file."""
    directory = check_report_dir(directory)
    names = splits[0].statistics.class_names
    class_frequency_chart(names, {s.split: s.statistics.pixel_frequency for s in splits},
                          {s.split: s.statistics.image_frequency for s in splits}, directory / CHART)
    lines = [f"{TITLE}: {dataset_name}", "",
             "Splits: " + ", ".join(f"{s.split} ({s.statistics.num_images} of {s.num_samples} masks read)"
                                    for s in splits), "", "## Findings", ""]
    if not findings:
        lines.append("No mask-encoding problem found.")
    for f in findings:
        lines += [f"- **{f.severity}** ({f.split}, {f.kind}): {f.message}", f"  - fix: `{f.fix}`"
                  if f.fix.startswith("dataset.") else f"  - fix: {f.fix}"]
    lines += ["", "## Checks", ""] + ([f"- {c}" for c in checks] or ["All files readable and paired."])
    lines += ["", "## Class frequencies", "", format_frequencies(splits, markdown=True), "",
              f"![class frequencies]({CHART})", "", "## Suggested class weights", ""]
    if class_weight is None:
        lines.append("No labelled pixels were read: no suggestion.")
    else:
        lines += [f"Median-frequency balancing ({weight_note}), clipped to [0.1, 10]:", "",
                  f"    loss.class_weight=[{','.join(f'{w:g}' for w in class_weight)}]", "",
                  "or `loss.class_weight=auto` to compute them from every training mask when training starts."]
    path = directory / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
