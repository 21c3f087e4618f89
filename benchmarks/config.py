"""What a benchmark row is, and the presets (grids of rows) the tool runs."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

IMPLS = ("segdense", "torchvision", "peer", "timm")
# What users would otherwise pick: torchvision's segmentation models (ResNet-50, dilated to OS8).
PEERS = ("deeplabv3_resnet50", "fcn_resnet50")
# The real-time peers (MobileNetV3-Large, dilated once: output stride 16), for ``--preset realtime``.
REALTIME_PEERS = ("lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large")
PEER_OUTPUT_STRIDES = {**dict.fromkeys(PEERS, 8), **dict.fromkeys(REALTIME_PEERS, 16)}
AMP_DTYPES = (None, "bf16", "fp16")


@dataclass(frozen=True)
class Row:
    """One configuration to measure. ``impl="torchvision"`` is the baseline: torchvision's DenseNet
    of the same architecture with the same dilation applied (backbone rows only). ``impl="peer"``
    is a torchvision segmentation model named by ``backbone`` (one of ``PEERS``, output stride 8, or of
    ``REALTIME_PEERS``, output stride 16; ``weights=None``), with the same classes, loss, dtype and layout as
    the segdense rows.
    ``impl="timm"``: timm's ``features_only`` model named by ``backbone`` under segdense's ``head``
    (``benchmarks.timm_backbone``); ``memory_efficient`` there is timm's ``set_grad_checkpointing()``.
    ``fused``: segdense's fused (Triton) dense-block kernels for memory-efficient rows (CUDA);
    ``None`` keeps the model's default (PyTorch operators). ``cuda_graphs``: segdense's dense
    blocks captured and replayed as CUDA graphs (``DenseNet(cuda_graphs=True)``; CUDA). ``head`` is a registered
    head or a ``conf/head/`` option (``fchardnet``). ``infer_size``: (height, width) of a separate inference input, one
    image (a frame, as real-time use sees it); ``None``: inference on the training batch."""

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
    infer_size: tuple[int, int] | None = None  # (height, width) of a one-image inference input (None: the batch)

    def __post_init__(self) -> None:
        if self.impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {self.impl!r}")
        if self.impl == "peer" and (self.output_stride != PEER_OUTPUT_STRIDES.get(self.backbone)
                                    or self.head is not None or self.memory_efficient):
            raise ValueError(f"peer rows are torchvision's {PEERS} at output stride 8 or {REALTIME_PEERS} at 16 (no "
                             f"head, no memory-efficient mode), got backbone={self.backbone!r}, "
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
        if self.infer_size is not None and (len(self.infer_size) != 2 or min(self.infer_size) < self.output_stride):
            raise ValueError(f"infer_size must be (height, width), each >= output_stride, got {self.infer_size}")

    @property
    def size(self) -> tuple[int, int]:
        """Input (height, width)."""
        return (self.crop if self.height is None else self.height), self.crop

    def _size_label(self) -> str:
        size = f"b{self.batch}x{self.crop}" if self.height is None else f"b{self.batch}x{self.height}x{self.crop}"
        return size if self.infer_size is None else f"{size} inf1x{self.infer_size[0]}x{self.infer_size[1]}"

    @property
    def infer_batch(self) -> int:
        """Images per inference: one with ``infer_size``, else the training batch."""
        return self.batch if self.infer_size is None else 1

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
        for key in ("units", "infer_size"):
            if d.get(key) is not None:
                d[key] = tuple(d[key])
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
    # Every row's float32 ONNX export and its INT8 twin (segdense.export.quantize_int8) timed with ONNX Runtime
    # beside eager at the row's inference size, with each one's inference peak memory (CPU; benchmarks.int8).
    int8: bool = False
    calibration_images: int = 2  # INT8 calibration: this many seeded random images ...
    # ... of this (height, width), at most the inference size. ONNX Runtime's calibrator keeps every tensor of a run:
    # FC-DenseNet56's export peaks at 6.3 GB calibrating on two 256x512 images, 2.2 GB on two 128x256 ones.
    calibration_size: tuple[int, int] = (128, 256)


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


INFER_SIZE, TRAIN_SIZE = (1024, 2048), (512, 1024)  # Cityscapes: whole frames, and the usual training crop
# The real-time comparison: (backbone, head, output stride, memory-efficient on CPU). FC-HarDNet-70's decoder ends
# at stride 4, the FC-DenseNets' at full resolution; densenet121 takes the default head at the default stride 16.
# FC-DenseNet103 trains memory-efficient on CPU: its plain step at 512x1024 needs about 13 GB.
REALTIME_MODELS = (("fchardnet70", "fchardnet", 4, False), ("fcdensenet56", "tiramisu", 1, False),
                   ("fcdensenet103", "tiramisu", 1, True), ("densenet121", "deeplabv3plus_lite", 16, False))


REALTIME_NAMES = tuple(m[0] for m in REALTIME_MODELS) + REALTIME_PEERS


def realtime_rows(device: str, infer_size: tuple[int, int] = INFER_SIZE, train_size: tuple[int, int] = TRAIN_SIZE,
                  only: tuple[str, ...] | None = None) -> list[Row]:
    """FC-HarDNet-70, FC-DenseNet56/103, densenet121 + the default head and torchvision's real-time peers
    (``REALTIME_PEERS``), 19 classes (Cityscapes'): inference at ``infer_size``, a training step at ``train_size``.
    CPU: float32, batch 1 (torchvision's DeepLabV3 at batch 2: its image-pooling BatchNorm cannot train on one
    image). CUDA: batch 8, channels-last, a float32 and a bf16 row of each model, every FC-DenseNet memory-efficient.
    ``only``: keep the rows of these backbones / peers."""
    gpu = device == "cuda"
    common = dict(device=device, crop=train_size[1], height=train_size[0], infer_size=tuple(infer_size),
                  num_classes=19, channels_last=gpu)
    rows = []
    for amp in ("bf16", None) if gpu else (None,):
        kw = dict(common, amp=amp, batch=8 if gpu else 1)
        for backbone, head, stride, memory_efficient in REALTIME_MODELS:
            rows.append(Row("segdense", backbone=backbone, head=head, output_stride=stride,
                            memory_efficient=memory_efficient or (gpu and backbone.startswith("fcdensenet")), **kw))
        rows.append(Row("peer", backbone="lraspp_mobilenet_v3_large", output_stride=16, **kw))
        rows.append(Row("peer", backbone="deeplabv3_mobilenet_v3_large", output_stride=16,
                        **dict(kw, batch=max(kw["batch"], 2))))
    return [r for r in rows if only is None or r.backbone in only]


def growth_series(device: str = "cpu", units: tuple[int, ...] = (6, 12, 24, 48), growth_rate: int = 12,
                  batch: int = 2, crop: int = 128, output_stride: int = 8) -> list[Row]:
    """Custom DenseNets with ``u`` units in each of 4 blocks: peak memory vs depth."""
    rows = []
    for u in units:
        rows += family(device, output_stride, batch, crop, backbone="densenet_custom",
                        units=(u,) * 4, growth_rate=growth_rate, baseline=False)
    return rows


def gpu_rows() -> list[Row]:
    """The ``gpu`` preset's rows."""
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
    ``realtime``: :func:`realtime_rows` (``overrides`` are its arguments); on CPU also float32 and INT8 ONNX.
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
    if name == "realtime":
        # Few repetitions: an FC-DenseNet103 inference at 1024x2048 takes about 20 s on 2 CPU cores.
        settings = Settings(warmup=1, reps=2 if device == "cpu" else 10, measure_flops=False, int8=device == "cpu")
        return realtime_rows(device, **overrides), settings
    if name == "growth":
        return growth_series(device), Settings(warmup=1, reps=3)
    if name == "gpu":
        return gpu_rows(), Settings(warmup=3, reps=10)
    raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")


PRESETS = ("quick", "cpu", "growth", "gpu", "fcdensenet", "rdnet", "realtime")
