#!/usr/bin/env python
"""Benchmark segdense's DenseNets against torchvision's, side by side.

    python tools/benchmark.py --quick                       # < 2 min on 2 CPU cores
    python tools/benchmark.py --preset cpu --json cpu.json  # the numbers in docs/benchmarks.md
    python tools/benchmark.py --preset gpu --json gpu.json  # H100/H200: bf16, channels_last, OS16/OS8
    python tools/benchmark.py --preset rdnet                # rdnet_tiny + UperNet: plain, memory-efficient, timm
    python tools/benchmark.py --preset realtime             # FC-HarDNet-70 & co.: eager, float32 and INT8 ONNX
    python tools/benchmark.py --preset realtime --infer-size 256 512 --train-size 128 256 --only fchardnet70
    python tools/benchmark.py --backbone densenet121 --output-stride 32 8 --batch 2 --crop 256 \
        --device cuda --amp bf16 --channels-last --compile   # eager and compiled twins of each row
    python tools/benchmark.py --onnx-models model.onnx model.int8.onnx --crop 512 --batch 1 --threads 2
        # exported files with ONNX Runtime, interleaved
    python tools/benchmark.py --as-avx2 --onnx-models ...   # the same with the AVX2 kernels on an AVX-512 CPU
    python tools/benchmark.py --preset scene --scene-side 20000 --monai-side 10000   # streamed scene vs MONAI

Prints a table (training step, inference, peak training memory, GFLOPs, FLOP/s as a fraction of a
peak: the higher of the best of several GEMM shapes measured in the same run and, on CPU, the cores'
theoretical FMA peak; and ratios to torchvision's and to segdense's plain mode) and writes every
number to ``--json``. Needs only torch/torchvision (segdense.build_model for heads).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from benchmarks import PRESETS, Row, Settings, family, peer_rows, preset, run, run_as_avx2, summarise, table, to_json
from benchmarks.config import INFER_SIZE, REALTIME_NAMES, TRAIN_SIZE
from benchmarks.onnx_models import onnx_table, time_onnx_models
from benchmarks.report import REALTIME_COLUMNS, describe_peak
from benchmarks.runner import machine_info
from benchmarks.scene import MONAI_SIDE, SCENE_SIDE, run_scene, scene_cases, scene_table, summarise_scene
from segdense.allocator import tune_malloc
from segdense.errors import UserError


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="same as --preset quick")
    p.add_argument("--preset", choices=PRESETS + ("scene",),
                   help="a named grid (see benchmarks.preset); scene: streamed scene prediction beside MONAI's "
                        "sliding_window_inference (benchmarks.scene)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cpu; gpu preset: cuda)")
    p.add_argument("--backbone", nargs="+", default=["densenet121"])
    p.add_argument("--units", nargs="+", type=int, default=None,
                   help="units per block, with --backbone densenet_custom")
    p.add_argument("--growth-rate", type=int, default=32, help="with --backbone densenet_custom")
    p.add_argument("--head", default=None, help="a segdense head (e.g. deeplabv3); default: backbone only")
    p.add_argument("--output-stride", nargs="+", type=int, default=[32, 8])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--amp", choices=["bf16", "fp16"], default=None)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true",
                   help="also measure every row under torch.compile, beside its eager twin")
    p.add_argument("--no-baseline", action="store_true", help="skip the torchvision rows")
    p.add_argument("--peers", action="store_true",
                   help="add torchvision's deeplabv3_resnet50 and fcn_resnet50 (OS8) on the same input")
    p.add_argument("--fused", action="store_true",
                   help="add a twin of each memory-efficient row with the fused (Triton) kernels (CUDA)")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="add a twin of each segdense row with CUDA-graphed dense blocks (CUDA)")
    p.add_argument("--mode", choices=["plain", "mem-eff"], default=None,
                   help="only rows of this memory mode (default: both)")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--no-memory", action="store_true")
    p.add_argument("--no-flops", action="store_true")
    p.add_argument("--matmul-size", type=int, default=None,
                   help="largest side of the peak-measuring GEMM shapes (default: 4096 CPU, 8192 CUDA)")
    p.add_argument("--as-avx2", action="store_true",
                   help="run the benchmark again with AVX-512, VNNI and AMX hidden from CPUID (python -m "
                        "benchmarks.run_as_avx2): the AVX2 kernels' figures on an AVX-512 CPU")
    p.add_argument("--onnx", action="store_true", help="also time ONNX Runtime (CPU, segdense plain rows)")
    p.add_argument("--onnx-models", nargs="+", type=Path, default=None, metavar="MODEL.onnx",
                   help="time these exported ONNX files instead (ONNX Runtime, CPU; the first is the baseline), "
                        "at --batch x 3 x --crop x --crop")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads for --onnx-models "
                   "(default: torch's thread count)")
    add_realtime_arguments(p)
    add_scene_arguments(p)
    p.add_argument("--json", type=Path, default=None, help="write all measurements here")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    return p.parse_args(argv)


def add_realtime_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``--preset realtime`` (benchmarks.config.realtime_rows)."""
    p.add_argument("--infer-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="--preset realtime: the one-image inference input (default: 1024 2048)")
    p.add_argument("--train-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="--preset realtime: the training input (default: 512 1024)")
    p.add_argument("--only", nargs="+", default=None, metavar="MODEL",
                   help="--preset realtime: only these backbones / torchvision peers (e.g. fchardnet70 "
                        "lraspp_mobilenet_v3_large)")


def add_scene_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``--preset scene``."""
    p.add_argument("--scene-side", type=int, default=SCENE_SIDE, help="--preset scene: segdense's scene side")
    p.add_argument("--monai-side", type=int, nargs="+", default=[MONAI_SIDE],
                   help="--preset scene: sides at which MONAI (whole scene in memory) and segdense both run")
    p.add_argument("--scene-folder", type=Path, default=Path("/tmp/segdense_scenes"),
                   help="--preset scene: where the scenes (kept for later runs) and predictions are written")


def rows_and_settings(args: argparse.Namespace) -> tuple[list[Row], Settings]:
    name = "quick" if args.quick else args.preset
    realtime_options = [o for o, v in (("--infer-size", args.infer_size), ("--train-size", args.train_size),
                                       ("--only", args.only)) if v is not None]
    if realtime_options and name != "realtime":
        raise ValueError(f"{', '.join(realtime_options)}: options of --preset realtime only")
    if name == "realtime":
        rows, settings = preset(name, device=args.device or "cpu", infer_size=tuple(args.infer_size or INFER_SIZE),
                                train_size=tuple(args.train_size or TRAIN_SIZE), only=args.only and tuple(args.only))
        if not rows:
            raise ValueError(f"--only {' '.join(args.only)}: no such model in --preset realtime; valid: "
                             f"{', '.join(REALTIME_NAMES)}")
    elif name:
        rows, settings = preset(name, device=args.device or ("cuda" if name == "gpu" else "cpu"))
    else:
        rows = []
        for backbone in args.backbone:
            custom = backbone == "densenet_custom"
            extra = dict(units=tuple(args.units or (6, 12, 24, 16)), growth_rate=args.growth_rate) if custom else {}
            for os_ in args.output_stride:
                rows += family(args.device or "cpu", os_, args.batch, args.crop, head=args.head,
                                baseline=not args.no_baseline, backbone=backbone, amp=args.amp,
                                channels_last=args.channels_last, **extra)
        settings = Settings()
        if args.peers:
            rows += peer_rows(args.device or "cpu", args.batch, args.crop, amp=args.amp,
                              channels_last=args.channels_last)
    if args.fused:
        rows += [dataclasses.replace(r, fused=True) for r in rows if r.memory_efficient]
    if args.cuda_graphs:
        rows += [dataclasses.replace(r, cuda_graphs=True) for r in rows if r.impl == "segdense"]
    if args.mode:
        rows = [r for r in rows if r.impl == "peer" or r.mode == args.mode]
    if args.compile:
        rows += [dataclasses.replace(r, compile=True) for r in rows]
    return rows, dataclasses.replace(
        settings,
        warmup=settings.warmup if args.warmup is None else args.warmup,
        reps=settings.reps if args.reps is None else args.reps,
        measure_memory=settings.measure_memory and not args.no_memory,
        measure_flops=settings.measure_flops and not args.no_flops,
        onnx=settings.onnx or args.onnx,
        matmul_size=args.matmul_size or settings.matmul_size,
    )


def onnx_models_main(args: argparse.Namespace, log) -> int:
    """``--onnx-models``: the files side by side (benchmarks.onnx_models)."""
    reps, warmup = args.reps or 9, 2 if args.warmup is None else args.warmup
    try:
        result = time_onnx_models(args.onnx_models, args.crop, args.batch, args.threads or torch.get_num_threads(), reps,
                                  warmup, log=log)
    except (ValueError, UserError) as e:
        print(f"benchmark: {e}", file=sys.stderr)
        return 2
    m = result["machine"]
    print(f"machine: {m['cpu']}, {m['cpu_count']} CPUs, torch's CPU capability {m['cpu_capability']}"
          + (f" (LD_PRELOAD={m['ld_preload']})" if m["ld_preload"] else ""))
    print(f"ONNX Runtime {m['onnxruntime']}, {m['ort_threads']} thread(s); input {'x'.join(map(str, result['input']))}"
          f"; {reps} interleaved reps after {warmup} warm-up")
    print(onnx_table(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    return 0


def scene_main(args: argparse.Namespace, log) -> int:
    """``--preset scene``: streamed prediction beside MONAI's sliding_window_inference (benchmarks.scene)."""
    try:
        cases = scene_cases(args.scene_side, args.monai_side)
        summary = summarise_scene(run_scene(cases, args.scene_folder, log=log))
    except (ValueError, RuntimeError) as e:
        print(f"benchmark: {e}", file=sys.stderr)
        return 2
    m = machine_info("cpu")
    print(f"machine: {m['cpu']}, {m['cpu_count']} CPUs, torch {m['torch']}, CPU capability {m['cpu_capability']}, "
          f"{m['torch_threads']} threads; window {cases[0].window}, stride {cases[0].stride}, batch {cases[0].batch}, "
          "Gaussian blend (sigma = window / 8)")
    print(scene_table(summary, markdown=args.markdown))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": m, "rows": summary}, indent=2))
        print(f"wrote {args.json}")
    failed = [d["label"] for d in summary if d["error"]]
    if failed:
        print(f"benchmark: {len(failed)} case(s) failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def realtime_note(summary: list[dict]) -> str:
    """What ``--preset realtime``'s rows measure, and how its INT8 files were calibrated."""
    lines = ["train: one training step (cross-entropy) at the row's batch and size, peak MB in a fresh process; "
             "inf / onnx / int8: one image at the 'inf' size, eager PyTorch, ONNX Runtime float32, ONNX Runtime INT8, "
             "peak MB of the first inference after loading, each in a fresh process"]
    calibrated = next((d["int8_info"]["calibration"] for d in summary if d.get("int8_info")), None)
    if calibrated:
        lines.append(f"INT8: QDQ, per-channel int8 weights, uint8 activations, calibrated on {calibrated} (for "
                     "speed only; accuracy: docs/benchmarks.md)")
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.as_avx2 and not run_as_avx2.is_active():  # replaces this process with itself under the library
        return run_as_avx2.main([sys.executable, str(Path(__file__).resolve()), *argv])
    malloc = tune_malloc()  # as the training tools do, so rows time what training would take
    start = time.perf_counter()
    log = lambda s: print(f"[{time.perf_counter() - start:6.1f}s] {s}", file=sys.stderr, flush=True)  # noqa: E731
    if args.onnx_models:
        return onnx_models_main(args, log)
    if args.preset == "scene":
        return scene_main(args, log)
    try:
        rows, settings = rows_and_settings(args)
        measured = run(rows, settings, log=log)
    except (ValueError, RuntimeError) as e:
        print(f"benchmark: {e}", file=sys.stderr)
        return 2
    summary = summarise(measured)
    print(f"machine: {measured['machine']}")
    print(malloc)
    print(describe_peak(measured["peak"]))
    print(f"{settings.reps} reps after {settings.warmup} warm-up; wall {measured['wall_s']:.0f} s; load average "
          f"{measured['load_average_start'][0]:.2f} at the start, {measured['machine']['load_average'][0]:.2f} at "
          "the end (1 min)")
    realtime = args.preset == "realtime"
    print(table(summary, markdown=args.markdown, columns=REALTIME_COLUMNS if realtime else None))
    if realtime:
        print(realtime_note(summary))
    over = [d["label"] for d in summary if max(d["infer_peak_frac"] or 0, d["train_peak_frac"] or 0) > 1]
    if over:
        print(f"note: {len(over)} row(s) above 100 % of the peak ({', '.join(over)}): their counted FLOPs include "
              "work the kernels skip (a dilated convolution's taps in its zero padding), or the peak is understated "
              "(see docs/benchmarks.md).")
    if any(r.device == "cpu" and r.impl == "segdense" and not r.channels_last for r in rows):
        print("note: segdense rows run channels-last on CPU by default (DenseNet(channels_last=None)); "
              "'cl' rows give both implementations channels-last weights and input.")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(to_json(measured, summary))
        print(f"wrote {args.json}")
    failed = [d["label"] for d in summary if d["error"]]
    if failed:
        print(f"benchmark: {len(failed)} row(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
