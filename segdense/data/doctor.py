"""The dataset doctor: finds the mask encodings that silently ruin a training run, and says what to pass instead.

It recognises 0/255 binary masks (255 is "ignore" here, so the foreground is never learned), RGB-coded masks,
values outside the classes, classes that never occur in a split, and a zero label that looks like "unlabelled"
(labels numbered from 1, ADE20K-style). Each :class:`Finding` carries the fix, in configuration terms.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from PIL import Image

from .io import IGNORE_INDEX, DatasetFileError
from .statistics import ClassStatistics

UNLABELLED_NAMES = {"unlabeled", "unlabelled", "void", "ignore", "ignored", "unknown", "none", "nothing"}
BINARY_IGNORED_SHARE = 0.05  # 0/255 masks: 255 covers at least this share of the pixels


@dataclass
class Finding:
    """One problem: which split, what was seen, and the fix. ``severity`` is ``error`` (training would learn the
    wrong thing) or ``warning``."""

    kind: str
    split: str
    message: str
    fix: str
    severity: str = "error"


@dataclass
class SplitDiagnosis:
    """What the doctor saw in one split: the class statistics of the readable masks, the masks that are RGB
    images, and every value outside the classes (value -> number of masks holding it, and one example)."""

    split: str
    num_samples: int
    statistics: ClassStatistics
    rgb_masks: list[str] = field(default_factory=list)
    outside_values: Counter = field(default_factory=Counter)
    outside_example: dict = field(default_factory=dict)
    binary_masks: int = 0  # readable masks holding only 0 and 255
    unreadable: list[str] = field(default_factory=list)


def _mask_path(dataset, index: int) -> str:
    return dataset.describe(index)[1] if hasattr(dataset, "describe") else f"mask {index}"


def inspect_split(dataset, split: str, indices: Sequence[int]) -> SplitDiagnosis:
    """Read the raw masks ``indices`` of ``dataset`` and collect what :func:`diagnose` needs."""
    num_classes = dataset.num_classes
    result = SplitDiagnosis(split, len(dataset), ClassStatistics.empty(dataset.class_names))
    for index in indices:
        path = _mask_path(dataset, int(index))
        try:
            mask = dataset.load_mask(int(index))
        except DatasetFileError as exc:
            (result.rgb_masks if "colour mode" in exc.problem else result.unreadable).append(exc.path)
            continue
        result.statistics.add(mask)
        if mask.ndim == 3:  # multilabel: the reader has checked every value is 0, 1 or ignore
            continue
        values = np.unique(mask)
        if set(values.tolist()) <= {0, IGNORE_INDEX}:
            result.binary_masks += 1
        for value in values[(values < 0) | ((values >= num_classes) & (values != IGNORE_INDEX))]:
            result.outside_values[int(value)] += 1
            result.outside_example.setdefault(int(value), path)
    return result


def mask_colours(paths: Sequence[str], limit: int = 16) -> list[tuple[tuple[int, int, int], int]]:
    """The colours of up to ``limit`` RGB masks with their pixel counts, most frequent first."""
    counts: Counter = Counter()
    for path in paths[:limit]:
        rgb = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3)
        colours, n = np.unique(rgb, axis=0, return_counts=True)
        for colour, k in zip(colours, n):
            counts[tuple(int(c) for c in colour)] += int(k)
    return counts.most_common()


def _list(values) -> str:
    return "[" + ",".join(str(list(v)).replace(" ", "") if isinstance(v, (tuple, list)) else str(v)
                          for v in values) + "]"


def diagnose(splits: Sequence[SplitDiagnosis], class_names: Sequence[str],
             palette: Sequence[Sequence[int]] = ()) -> list[Finding]:
    """The findings, with fixes, from the inspected splits."""
    names = list(class_names)
    findings: list[Finding] = []
    for s in splits:
        if s.rgb_masks:
            findings.append(_rgb_finding(s, len(names), palette))
        binary = _binary_finding(s, names)
        findings += [binary] if binary else []
        findings += _label_value_findings(s, names)
        missing = s.statistics.missing_classes()
        if s.statistics.num_images and missing and not s.rgb_masks and not binary and len(missing) < len(names):
            findings.append(Finding(
                "missing_classes", s.split,
                f"{len(missing)} class(es) never occur in the {s.statistics.num_images} mask(s) read: "
                f"{', '.join(missing)}",
                "if they are real classes, add images that show them to this split (a class absent from val has "
                "no IoU and is left out of mIoU); otherwise remove them from dataset.class_names", "warning"))
    return findings


def _binary_finding(s: SplitDiagnosis, names: list[str]) -> Finding | None:
    """Masks of only 0 and 255, where 255 was meant as the foreground."""
    stats, read, c = s.statistics, s.statistics.num_images, len(names)
    binary = read and s.binary_masks == read and stats.pixels[1:].sum() == 0 and c > 1 and \
        stats.ignored_pixels >= BINARY_IGNORED_SHARE * (stats.pixels.sum() + stats.ignored_pixels)
    if not binary:
        return None
    share = stats.ignored_pixels / max(int(stats.pixels.sum()) + stats.ignored_pixels, 1)
    fix = ("read 255 as class 1: dataset.mask_colors=[[0,0,0],[255,255,255]] (folder dataset), "
           "or rewrite the masks with 255 -> 1" if c == 2 else
           "rewrite the masks with 255 -> the foreground class index (255 is reserved for 'ignore')")
    return Finding(
        "binary_0_255", s.split,
        f"all {read} masks hold only 0 and 255: 255 means 'ignore' in segdense, so the {share:.0%} of pixels "
        f"at 255 would never be learned and classes {names[1:]} never occur", fix)


def _label_value_findings(s: SplitDiagnosis, names: list[str]) -> list[Finding]:
    """Values outside the classes (labels numbered from 1, or unknown values) and a class 0 that looks unlabelled."""
    stats, c, findings = s.statistics, len(names), []
    outside = dict(s.outside_values)
    if outside and set(outside) == {c} and stats.pixels[0] > 0:
        findings.append(Finding(
            "zero_label", s.split,
            f"masks hold the values 0..{c} for {c} classes ({outside[c]} mask(s) hold {c}, e.g. "
            f"{s.outside_example[c]}): the labels look numbered from 1 with 0 = 'unlabelled'",
            "dataset.reduce_zero_label=true (folder dataset: 0 -> 255 ignored, v -> v-1); or, if 0 is a real "
            f"class, add a name for class {c} to dataset.class_names"))
    elif outside:
        values = sorted(outside)
        examples = "; ".join(f"{v} in {outside[v]} mask(s), e.g. {s.outside_example[v]}" for v in values[:5])
        findings.append(Finding(
            "outside_values", s.split,
            f"mask values outside [0, {c}) and {IGNORE_INDEX}: {examples}",
            f"give dataset.class_names one name per value up to {max(values)}, or rewrite those values to "
            f"{IGNORE_INDEX} (ignore) or to a class index"))
    if stats.num_images and stats.ignored_pixels == 0 and names and names[0].strip().lower() in UNLABELLED_NAMES:
        findings.append(Finding(
            "zero_label", s.split,
            f"class 0 is named {names[0]!r} and no pixel is {IGNORE_INDEX}: the zero label looks like "
            f"'unlabelled' but is trained as a class ({stats.pixel_frequency[0]:.1%} of the pixels)",
            "dataset.reduce_zero_label=true (folder dataset: 0 -> 255 ignored, v -> v-1, and drop "
            f"{names[0]!r} from dataset.class_names); or keep it if it is a real class", "warning"))
    return findings


def _rgb_finding(s: SplitDiagnosis, num_classes: int, palette) -> Finding:
    colours = mask_colours(s.rgb_masks)
    known = [tuple(int(v) for v in p) for p in palette[:num_classes]]
    message = (f"{len(s.rgb_masks)} mask(s) are RGB images (e.g. {s.rgb_masks[0]}); masks are read as class "
               f"indices, so these cannot be used as they are. Colours found: "
               + ", ".join(f"{list(col)} ({n} px)" for col, n in colours[:12]) + (" ..." if len(colours) > 12 else ""))
    if len(colours) > 2 * num_classes + 2:
        fix = (f"{len(colours)} distinct colours for {num_classes} classes: the masks look resized or JPEG-compressed "
               "(blended colours); save them losslessly (PNG, nearest-neighbour resizing), then pass "
               "dataset.mask_colors=[[r,g,b], ...] (one colour per class, in class order)")
    else:
        found = [col for col, _ in colours]
        if known and set(found) <= set(known) | {(255, 255, 255)}:
            ordered, note = known, "the dataset palette's colours, in class order"
        else:
            ordered, note = found[:num_classes], "the colours found, most frequent first: reorder them to class order"
        fix = (f"dataset.mask_colors={_list(ordered)} ({note}; a colour not listed becomes {IGNORE_INDEX} = ignore)")
    return Finding("rgb_masks", s.split, message, fix)


def format_frequencies(splits: Sequence[SplitDiagnosis], markdown: bool = False) -> str:
    """Per-class pixel share and image share of every split, as a text or markdown table."""
    names = splits[0].statistics.class_names
    header = ["id", "class"] + [f"{s.split} {kind}" for s in splits for kind in ("pixels", "images")]
    rows = []
    for i, name in enumerate(names):
        row = [str(i), name]
        for s in splits:
            st = s.statistics
            row += [f"{st.pixel_frequency[i]:.2%}", f"{st.images[i]}/{st.num_images} ({st.image_frequency[i]:.0%})"]
        rows.append(row)
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(r[k]) for r in rows + [header]) for k in range(len(header))]
    return "\n".join("  ".join(cell.rjust(w) if k != 1 else cell.ljust(w) for k, (cell, w) in
                               enumerate(zip(r, widths))) for r in [header] + rows)
