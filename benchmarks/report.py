"""Turn measurements into rows with ratios to their baselines, a terminal table and JSON."""
from __future__ import annotations

import dataclasses
import json

from .runner import Result, median_spread


def _ratio(a, b):
    return a / b if a is not None and b else None


def summarise(run: dict) -> list[dict]:
    """One dict per row. Ratios: ``*_vs_tv`` against torchvision's plain DenseNet of the same
    architecture and dilation (same run); ``*_vs_plain`` against segdense's plain mode;
    ``*_vs_peer`` against torchvision's deeplabv3_resnet50 row on the same batch, crop, dtype and
    layout."""
    results: list[Result] = run["results"]
    peak = run["peak_flops"]
    out = []
    for res in results:
        r = res.row
        train, train_sp = median_spread(res.train_s)
        inf, inf_sp = median_spread(res.infer_s)
        d = {"label": r.label(), "config": dataclasses.asdict(r), "error": res.error,
             "train_step_s": train, "train_spread": train_sp, "infer_s": inf, "infer_spread": inf_sp,
             "train_img_s": _ratio(r.batch, train), "infer_img_s": _ratio(r.infer_batch, inf),
             "peak_mb": _mb(res.peak_bytes),
             "gflops_per_img": res.flops_infer / r.infer_batch / 1e9 if res.flops_infer else None,
             "train_gflops_per_img": res.flops_train / r.batch / 1e9 if res.flops_train else None,
             "infer_peak_frac": _ratio(_ratio(res.flops_infer, inf), peak),
             "train_peak_frac": _ratio(_ratio(res.flops_train, train), peak),
             "first_step_s": res.first_step_s, "train_s_raw": res.train_s, "infer_s_raw": res.infer_s,
             **_onnx_fields(res)}
        out.append(d)
    by_key = {}
    for res, d in zip(results, out):
        by_key.setdefault(res.row.group_key(), {})[(res.row.impl, res.row.memory_efficient)] = d
    eager = {dataclasses.replace(res.row, compile=False): d for res, d in zip(results, out) if not res.row.compile}
    for res, d in zip(results, out):
        twin = eager.get(dataclasses.replace(res.row, compile=False)) if res.row.compile else None
        # Speed-up of torch.compile over the same row in eager mode (same run).
        d["train_compile_speedup"] = _ratio(twin and twin["train_step_s"], d["train_step_s"])
        d["infer_compile_speedup"] = _ratio(twin and twin["infer_s"], d["infer_s"])
    peers = {}
    for res, d in zip(results, out):
        if res.row.impl == "peer" and res.row.backbone == "deeplabv3_resnet50":
            peers[res.row.peer_key()] = d
    for res, d in zip(results, out):
        # Against what users would otherwise pick: deeplabv3_resnet50 on the same input and settings
        # (segmentation-model rows only; a bare backbone is not a segmenter).
        peer = peers.get(res.row.peer_key()) if res.row.head or res.row.impl == "peer" else None
        for m, key in (("train", "train_step_s"), ("infer", "infer_s"), ("mem", "peak_mb")):
            d[f"{m}_vs_peer"] = _ratio(d[key], peer[key]) if peer and peer is not d else None
    for res, d in zip(results, out):
        group = by_key[res.row.group_key()]
        for name, base in (("tv", group.get(("torchvision", False))), ("plain", group.get(("segdense", False)))):
            for m, key in (("train", "train_step_s"), ("infer", "infer_s"), ("mem", "peak_mb")):
                d[f"{m}_vs_{name}"] = _ratio(d[key], base[key]) if base and base is not d else None
    return out


def _mb(n: int | None) -> float | None:
    return n / 2**20 if n is not None else None


def _onnx_fields(res: Result) -> dict:
    """The ONNX Runtime columns: float32 against eager (``onnx_vs_eager``, ``Settings.onnx``); float32 and INT8
    (``Settings.int8``): images per second, ``int8_vs_onnx`` (INT8's speed over float32 ONNX's, median over median
    of the alternating runs) and each inference's peak MB."""
    onnx, onnx_sp = median_spread(res.onnx_s)
    onnx_eager, _ = median_spread(res.onnx_eager_s)
    int8, int8_sp = median_spread(res.int8_s)
    return {"onnx_infer_s": onnx, "onnx_spread": onnx_sp, "onnx_vs_eager": _ratio(onnx_eager, onnx),
            "onnx_img_s": _ratio(res.row.infer_batch, onnx), "int8_infer_s": int8, "int8_spread": int8_sp,
            "int8_img_s": _ratio(res.row.infer_batch, int8), "int8_vs_onnx": _ratio(onnx, int8),
            "infer_peak_mb": _mb(res.infer_peak_bytes), "onnx_peak_mb": _mb(res.onnx_peak_bytes),
            "int8_peak_mb": _mb(res.int8_peak_bytes), "int8_info": res.int8_info,
            "onnx_s_raw": res.onnx_s, "int8_s_raw": res.int8_s}


def _f(v, fmt):
    return "-" if v is None else format(v, fmt)


COLUMNS = [
    ("row", 44, lambda d: d["label"]),
    ("step ms", 8, lambda d: _f(d["train_step_s"] and d["train_step_s"] * 1e3, ".0f")),
    ("±%", 4, lambda d: _f(d["train_spread"] and d["train_spread"] * 100, ".0f")),
    ("train im/s", 10, lambda d: _f(d["train_img_s"], ".2f")),
    ("inf im/s", 8, lambda d: _f(d["infer_img_s"], ".2f")),
    ("±%", 4, lambda d: _f(d["infer_spread"] and d["infer_spread"] * 100, ".0f")),
    ("peak MB", 8, lambda d: _f(d["peak_mb"], ".0f")),
    ("GF/img", 7, lambda d: _f(d["gflops_per_img"], ".2f")),
    ("inf %pk", 7, lambda d: _f(d["infer_peak_frac"] and d["infer_peak_frac"] * 100, ".0f")),
    ("trn %pk", 7, lambda d: _f(d["train_peak_frac"] and d["train_peak_frac"] * 100, ".0f")),
    ("step/tv", 7, lambda d: _f(d["train_vs_tv"], ".2f")),
    ("inf/tv", 6, lambda d: _f(d["infer_vs_tv"], ".2f")),
    ("mem/tv", 6, lambda d: _f(d["mem_vs_tv"], ".2f")),
    ("step/pl", 7, lambda d: _f(d["train_vs_plain"], ".2f")),
    ("step/dl3r50", 11, lambda d: _f(d["train_vs_peer"], ".2f")),
    ("mem/dl3r50", 10, lambda d: _f(d["mem_vs_peer"], ".2f")),
    ("mem/pl", 6, lambda d: _f(d["mem_vs_plain"], ".2f")),
    ("ort×", 5, lambda d: _f(d["onnx_vs_eager"], ".2f")),
    ("cmp×", 5, lambda d: _f(d["train_compile_speedup"], ".2f")),
]


# --preset realtime: training at the row's batch and crop, inference of one image at its infer_size.
REALTIME_COLUMNS = [("row", 60, lambda d: d["label"])] + [
    (title, len(title), lambda d, key=key, fmt=fmt: _f(d[key], fmt)) for title, key, fmt in (
        ("train im/s", "train_img_s", ".3f"), ("train MB", "peak_mb", ".0f"),
        ("inf im/s", "infer_img_s", ".3f"), ("inf MB", "infer_peak_mb", ".0f"),
        ("onnx im/s", "onnx_img_s", ".3f"), ("onnx MB", "onnx_peak_mb", ".0f"),
        ("int8 im/s", "int8_img_s", ".3f"), ("int8 MB", "int8_peak_mb", ".0f"),
        ("int8/onnx", "int8_vs_onnx", ".2f"))]


def table(rows: list[dict], markdown: bool = False, columns: list | None = None) -> str:
    """Fixed-width table (or Markdown) of the summarised rows in ``columns`` (default ``COLUMNS``); errors on their
    own lines."""
    columns = COLUMNS if columns is None else columns
    if markdown:
        lines = ["| " + " | ".join(c[0] for c in columns) + " |",
                 "|" + "|".join("---" for _ in columns) + "|"]
        lines += ["| " + " | ".join(str(c[2](d)) for c in columns) + " |" for d in rows]
    else:
        lines = ["  ".join(c[0].rjust(c[1]) if i else c[0].ljust(c[1]) for i, c in enumerate(columns))]
        for d in rows:
            cells = [str(c[2](d)) for c in columns]
            lines.append("  ".join(v.rjust(c[1]) if i else v.ljust(c[1]) for i, (v, c) in enumerate(zip(cells, columns))))
    lines += [f"error in {d['label']}: {d['error']}" for d in rows if d["error"]]
    return "\n".join(lines)


def describe_peak(peak: dict) -> str:
    """The peak of the "% of peak" columns, the two figures it was chosen from, and the theoretical one's inputs."""
    measured, theory = peak["measured"], peak["theoretical"]
    shape = max(measured, key=measured.get)
    lines = [f"peak ({peak['dtype']}): {peak['flops'] / 1e9:.1f} GFLOP/s, the higher of:",
             f"  measured: {measured[shape] / 1e9:.1f} GFLOP/s, the best of {len(measured)} GEMM shapes ({shape})"]
    if theory is None:
        lines.append("  theoretical: not known for this device and dtype (CPU float32 at AVX2 or AVX512 only)")
    else:
        lines.append(f"  theoretical: {theory['flops'] / 1e9:.1f} GFLOP/s = {theory['frequency_hz'] / 1e9:.2f} GHz "
                     f"({theory['frequency_source']}) x {theory['fma_units']} FMA units per core (assumed) x "
                     f"{theory['lanes']} float32 lanes ({theory['capability']}) x 2 FLOPs per FMA x "
                     f"{theory['cores']} core(s)")
    return "\n".join(lines)


def to_json(run: dict, rows: list[dict]) -> str:
    head = {k: v for k, v in run.items() if k != "results"}
    return json.dumps({**head, "rows": rows}, indent=2)
