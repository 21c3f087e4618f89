"""What a benchmark row is, and the presets (grids of rows) the tool runs."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

IMPLS = ("segdense", "torchvision", "peer", "timm")
# What users would otherwise pick: torchvision's segmentation models (ResNet-50, dilated to OS8).
PEERS = ("deeplabv3_resnet50", "fcn_resnet50")
AMP_DTYPES = (None, "bf16", "fp16")


@dataclass(frozen=True)
class Row:
    """One configuration to measure. ``impl="torchvision"`` is the baseline: torchvision's DenseNet
    of the same architecture with the same dilation applied (backbone rows only). ``impl="peer"``
    is a torchvision segmentation model named by ``backbone`` (one of ``PEERS``; output stride 8,
    ``weights=None``), with the same classes, loss, dtype and layout as the segdense rows.
    ``impl="timm"``: timm's ``features_only`` model named by ``backbone`` under segdense's ``head``
    (``benchmarks.timm_backbone``); ``memory_efficient`` there is timm's ``set_grad_checkpointing()``.
    ``fused``: segdense's fused (Triton) dense-block kernels for memory-efficient rows (CUDA);
    ``None`` keeps the model's default (PyTorch operators). ``cuda_graphs``: segdense's dense
    blocks captured and replayed as CUDA graphs (``DenseNet(cuda_graphs=True)``; CUDA)."""

    impl: str = "segdense"
    backbone: str = "densenet121"
    head: str | None = None
    output_stride: int = 32
    batch: int = 2
    crop: int = 256
    memory_efficient: bool = False
    channels_last: bool = False
    amp: str | None = None
    compile: bool = False
    device: str = "cpu"
    units: tuple[int, ...] | None = None  # densenet_custom only
    growth_rate: int | None = None  # densenet_custom only
    num_classes: int = 21
    fused: bool | None = None
    cuda_graphs: bool = False
    height: int | None = None  # input height when it differs from ``crop`` (the width), e.g. CamVid's 360x480

    def __post_init__(self) -> None:
        if self.impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {self.impl!r}")
        if self.impl == "peer" and (self.backbone not in PEERS or self.output_stride != 8
                                    or self.head is not None or self.memory_efficient):
            raise ValueError(f"peer rows are torchvision's {PEERS} at output stride 8 (no head, "
                             f"no memory-efficient mode), got backbone={self.backbone!r}, "
                             f"output_stride={self.output_stride}")
        if self.cuda_graphs and (self.impl != "segdense" or self.device != "cuda"):
            raise ValueError(f"cuda_graphs rows are segdense rows on device='cuda', got "
                             f"impl={self.impl!r}, device={self.device!r}")
        if self.amp not in AMP_DTYPES:
            raise ValueError(f"amp must be one of {AMP_DTYPES}, got {self.amp!r}")
        if self.impl == "timm" and (self.head is None or self.output_stride != 32):
            raise ValueError(f"timm rows are a timm backbone at its output stride 32 under a segdense head, got "
                             f"head={self.head!r}, output_stride={self.output_stride}")
        if self.impl == "torchvision" and self.head is not None:
            raise ValueError("torchvision baseline rows are backbone-only (head=None)")
        if self.impl != "peer" and (self.units is None) != (self.backbone != "densenet_custom"):
            raise ValueError("units (and growth_rate) are given exactly when backbone='densenet_custom'")
        if self.batch < 1 or min(self.size) < self.output_stride:
            raise ValueError(f"batch must be >= 1 and crop >= output_stride, got {self.batch}, {self.size}")

    @property
    def size(self) -> tuple[int, int]:
        """Input (height, width)."""
        return (self.crop if self.height is None else self.height), self.crop

    def _size_label(self) -> str:
        return f"b{self.batch}x{self.crop}" if self.height is None else f"b{self.batch}x{self.height}x{self.crop}"

    @property
    def mode(self) -> str:
        return "mem-eff" if self.memory_efficient else "plain"

    @property
    def arch(self) -> str:
        if self.units is None:
            return self.backbone
        return f"custom{'-'.join(map(str, self.units))}k{self.growth_rate}"

    def peer_key(self) -> tuple:
        """Rows measured on the same batch, crop, dtype, layout and device compare with the peer
        rows of that configuration, whatever their architecture."""
        return (self.batch, self.size, self.amp, self.channels_last, self.device, self.num_classes,
                self.compile)

    def group_key(self) -> tuple:
        """Rows that differ only in implementation and memory mode compare against each other."""
        d = dataclasses.asdict(self)
        d.pop("impl")
        d.pop("memory_efficient")
        d.pop("fused")
        d.pop("cuda_graphs")
        return tuple(sorted((k, str(v)) for k, v in d.items()))

    def label(self) -> str:
        if self.impl == "peer":
            parts = ["tv", self.backbone, f"os{self.output_stride}", self._size_label()]
            parts += [f for f, on in (("cl", self.channels_last), ("compile", self.compile)) if on]
            return " ".join(parts + ([self.amp] if self.amp else []))
        parts = [{"segdense": "se", "timm": "timm"}.get(self.impl, "tv"), self.arch]
        if self.head:
            parts.append(self.head)
        parts += [f"os{self.output_stride}", self._size_label(), self.mode]
        parts += [f for f, on in (("cl", self.channels_last), ("compile", self.compile)) if on]
        if self.fused:
            parts.append("fused")
        if self.cuda_graphs:
            parts.append("graphs")
        if self.amp:
            parts.append(self.amp)
        return " ".join(parts)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "Row":
        d = json.loads(text)
        if d.get("units") is not None:
            d["units"] = tuple(d["units"])
        return cls(**d)


@dataclass(frozen=True)
class Settings:
    """How hard to measure: warm-up and timed repetitions (median and spread are reported)."""

    warmup: int = 1
    reps: int = 5
    measure_memory: bool = True
    memory_output_strides: tuple[int, ...] | None = None  # peak memory only for these rows (None: all)
    measure_flops: bool = True
    matmul_size: int | None = None  # largest side of the peak-measuring GEMM shapes (None: 4096 CPU, 8192 CUDA)
    onnx: bool = False  # also time ONNX Runtime inference of segdense plain backbone rows (CPU)


def family(device: str, output_stride: int, batch: int, crop: int, head: str | None = None,
            baseline: bool = True, **kw) -> list[Row]:
    """segdense plain + memory-efficient rows and, for backbone rows, torchvision's plain and
    checkpointed (memory_efficient=True) DenseNet with the same dilation."""
    common = dict(device=device, output_stride=output_stride, batch=batch, crop=crop, **kw)
    rows = []
    if baseline and head is None:
        rows += [Row("torchvision", **common), Row("torchvision", memory_efficient=True, **common)]
    rows += [Row("segdense", head=head, **common), Row("segdense", head=head, memory_efficient=True, **common)]
    return rows


def peer_rows(device: str, batch: int, crop: int, **kw) -> list[Row]:
    """torchvision's deeplabv3_resnet50 and fcn_resnet50 (OS8, random weights) on the same input."""
    return [Row("peer", backbone=p, output_stride=8, device=device, batch=batch, crop=crop, **kw)
            for p in PEERS]


def _channels_last_pair(device: str, output_stride: int, batch: int, crop: int) -> list[Row]:
    """torchvision and segdense plain, both with channels-last weights and input. On CPU segdense
    runs channels-last by itself (``DenseNet(channels_last=None)``), so this pair shows how much
    of its lead over the plain torchvision row is the memory format."""
    common = dict(device=device, output_stride=output_stride, batch=batch, crop=crop, channels_last=True)
    return [Row("torchvision", **common), Row("segdense", **common)]


def fcdensenet_rows(device: str) -> list[Row]:
    """FC-DenseNet103 training steps at CamVid's 360x480 (11 classes; the configuration its users report running
    out of memory with on 12 GB cards): plain and memory-efficient; on CUDA at batch 3 in bf16 channels-last, also
    fused and CUDA-graphed; on CPU at batch 1. torchvision's peers on the same input."""
    gpu = device == "cuda"
    kw = dict(device=device, batch=3 if gpu else 1, crop=480, height=360, num_classes=11)
    if gpu:
        kw.update(channels_last=True, amp="bf16")
    fc = dict(backbone="fcdensenet103", head="tiramisu", output_stride=1, **kw)
    rows = [Row("segdense", **fc), Row("segdense", memory_efficient=True, **fc)]
    if gpu:
        rows += [Row("segdense", memory_efficient=True, fused=True, **fc), Row("segdense", cuda_graphs=True, **fc),
                 Row("segdense", memory_efficient=True, cuda_graphs=True, **fc)]
    if gpu:
        return rows + peer_rows(**kw)
    # torchvision's DeepLabV3 cannot train on one image: its image-pooling BatchNorm then sees one value per
    # channel. On CPU its row takes batch 2; fcn_resnet50 (no pooling branch) runs at batch 1 beside segdense's.
    return rows + [Row("peer", backbone="fcn_resnet50", output_stride=8, **kw),
                   Row("peer", backbone="deeplabv3_resnet50", output_stride=8, **{**kw, "batch": 2})]


def rdnet_rows(device: str) -> list[Row]:
    """rdnet_tiny + UperNet (150 classes, ADE20K's) training steps: segdense plain and memory-efficient, timm's
    rdnet_tiny with ``set_grad_checkpointing()`` under the same head, and torchvision's deeplabv3_resnet50 on the
    same input. CPU: batch 2 at 256^2; CUDA: batch 8 at 512^2 in bf16, channels-last."""
    gpu = device == "cuda"
    kw = dict(device=device, batch=8 if gpu else 2, crop=512 if gpu else 256, num_classes=150)
    if gpu:
        kw.update(channels_last=True, amp="bf16")
    rd = dict(backbone="rdnet_tiny", head="upernet", output_stride=32, **kw)
    return [Row("segdense", **rd), Row("segdense", memory_efficient=True, **rd),
            Row("timm", memory_efficient=True, **rd),
            Row("peer", backbone="deeplabv3_resnet50", output_stride=8, **kw)]


def growth_series(device: str = "cpu", units: tuple[int, ...] = (6, 12, 24, 48), growth_rate: int = 12,
                  batch: int = 2, crop: int = 128, output_stride: int = 8) -> list[Row]:
    """Custom DenseNets with ``u`` units in each of 4 blocks: peak memory vs depth."""
    rows = []
    for u in units:
        rows += family(device, output_stride, batch, crop, backbone="densenet_custom",
                        units=(u,) * 4, growth_rate=growth_rate, baseline=False)
    return rows


def preset(name: str, device: str = "cpu", **overrides) -> tuple[list[Row], Settings]:
    """Named grids. ``quick``: densenet121 plain at OS32 (also with channels-last weights and
    input for both) and plain + memory-efficient at OS8, batch 2, 256^2, each beside torchvision
    (< 2 min on 2 idle cores).
    ``cpu``: quick's rows with more repetitions, the deeplabv3 rows and the depth series.
    ``gpu``: densenet121 (+deeplabv3) at OS16 and OS8, 512^2, batch 16, bf16, channels_last, and
    deeplabv3 at OS8 with batch 8 (the memory-efficient target's configuration), and the FC-DenseNet rows.
    ``fcdensenet``: :func:`fcdensenet_rows` on the device (CPU: batch 1; CUDA: batch 3).
    ``rdnet``: :func:`rdnet_rows` on the device (CPU: batch 2, 256^2; CUDA: batch 8, 512^2, bf16).
    Compiled rows are opt-in (``--compile`` adds a compiled twin of every row): compiling
    DenseNet-121 + ASPP took over three minutes on an H200 with torch 2.11, longer than a preset
    should."""
    if name == "quick":
        rows = [r for r in family(device, 32, 2, 256) if not r.memory_efficient]
        rows += _channels_last_pair(device, 32, 2, 256)
        rows += family(device, 8, 2, 256)
        rows += family(device, 8, 2, 256, head="deeplabv3") + peer_rows(device, 2, 256)
        # A CPU memory row is a fresh subprocess (~10 s): only the OS8 rows the target is about.
        return rows, Settings(warmup=1, reps=3, memory_output_strides=(8,))
    if name == "cpu":
        rows = family(device, 32, 2, 256) + _channels_last_pair(device, 32, 2, 256)
        rows += family(device, 8, 2, 256) + family(device, 8, 2, 256, head="deeplabv3")
        rows += peer_rows(device, 2, 256)
        rows += growth_series(device)
        return rows, Settings(warmup=1, reps=7, onnx=True)
    if name == "fcdensenet":
        return fcdensenet_rows(device), Settings(warmup=1, reps=3 if device == "cpu" else 10)
    if name == "rdnet":
        return rdnet_rows(device), Settings(warmup=1, reps=3 if device == "cpu" else 10)
    if name == "growth":
        return growth_series(device), Settings(warmup=1, reps=3)
    if name == "gpu":
        kw = dict(channels_last=True, amp="bf16")
        rows = []
        for os_ in (16, 8):
            rows += family("cuda", os_, 16, 512, **kw)
            rows += family("cuda", os_, 16, 512, head="deeplabv3", **kw)
        rows += peer_rows("cuda", 16, 512, **kw)
        # The memory-efficient target's own GPU configuration: deeplabv3, OS8, batch 8, 512^2,
        # with the fused kernels and without (PyTorch ops), beside the peers.
        rows += family("cuda", 8, 8, 512, head="deeplabv3", **kw)
        rows += [r for r in family("cuda", 8, 8, 512, head="deeplabv3", fused=True, **kw) if r.memory_efficient]
        # ... and with CUDA-graphed dense blocks (plain, memory-efficient, memory-efficient fused).
        rows += family("cuda", 8, 8, 512, head="deeplabv3", cuda_graphs=True, **kw)
        rows += [r for r in family("cuda", 8, 8, 512, head="deeplabv3", fused=True, cuda_graphs=True, **kw)
                 if r.memory_efficient]
        rows += peer_rows("cuda", 8, 512, **kw)
        rows += fcdensenet_rows("cuda")
        return rows, Settings(warmup=3, reps=10)
    raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")


PRESETS = ("quick", "cpu", "growth", "gpu", "fcdensenet", "rdnet")
