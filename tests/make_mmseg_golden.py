"""Make the golden files that test segdense's UperNet head and the RDNet checkpoint converter against
mmsegmentation and the RDNet authors' backbone code. Run it once; the normal test suite only reads the
files it writes (tests/data/golden/) and never imports mmseg.

Set-up (a separate environment; mmseg is never a dependency of segdense or of its test suite):

    python -m venv /path/venv-mmseg
    /path/venv-mmseg/bin/pip install torch timm mmsegmentation==1.2.2 mmcv-lite==2.1.0 mmengine
    git clone https://github.com/naver-ai/rdnet /path/rdnet

Run, from the repository root:

    /path/venv-mmseg/bin/python tests/make_mmseg_golden.py --rdnet-repo /path/rdnet

``--rdnet-repo`` is a checkout of naver-ai/rdnet or its git directory (then ``rdnet/__init__.py`` and
``rdnet/rdnet.py`` are read with ``git show HEAD:...``). The authors' files are copied into a temporary
folder for the run only. ``--out`` changes the output folder (default: tests/data/golden next to this file).
The files are made on the CPU from fixed seeds, so a rerun with the same package versions rewrites the
same numbers (torch 2.14.1, timm 1.0.31, mmsegmentation 1.2.2 made the stored ones).

mmcv-lite has no compiled ``mmcv.ops``, which mmseg imports; a stand-in module whose attributes are
placeholder classes is put into ``sys.modules["mmcv.ops"]`` first. Nothing used here calls into it
(UPerHead, FCNHead, EncoderDecoder and TIMMBackbone are pure PyTorch); a placeholder raises if built.

Files written:

``upernet_head.pt``: mmseg's ``UPerHead`` alone, small (in_channels 8/12/16/20, channels 8, 7 classes),
random weights and BatchNorm running statistics, eval mode::

    {"state_dict": head.state_dict(),
     "config": the UPerHead arguments (in_channels, channels, pool_scales, num_classes, dropout_ratio,
               align_corners),
     "features": four (1, C, H, W) tensors at strides 4/8/16/32 of a 65x97 image (17x25 ... 3x4),
     "logits": head(features), (1, 7, 17, 25)}

``upernet_rdnet_authors.pth``: a reduced-width UperNet-RDNet in the layout of the authors' ADE20K
checkpoints (mmseg 0.x ``EncoderDecoder``)::

    {"meta": {"mmseg_version", "config", "CLASSES": the 150 ADE20K names, "PALETTE": 150 [r, g, b],
              "iter", "epoch"},
     "state_dict": {"backbone.timm_model.stem.stem.*", "backbone.timm_model.dense_stages_N.*",
                    "decode_head.*" (UPerHead), "auxiliary_head.*" (FCNHead, one conv, on the third
                    feature)},
     "optimizer": an AdamW state_dict before its first step (the published files carry one too)}

The backbone is the authors' ``RDNet`` (their rdnet/rdnet.py registers it in timm as ``rdnet_tiny``)
built through ``timm.create_model(..., features_only=True)`` as their ``RDNetBackbone`` does (here mmseg's
identical ``TIMMBackbone``): timm's FeatureListNet, out_indices (0, 1, 2, 3), flatten_sequential=True.
It keeps rdnet_tiny's structure (7 stages, Block in stages 1-2 and BlockESE after, downsampling at stages
2, 3 and 7) at reduced widths (``RDNET_ARGS``), with random weights including the layer-scale gammas.

``upernet_rdnet_authors_io.pt``: what mmseg computes with that model in eval mode::

    {"input": (1, 3, 48, 80) image tensor,
     "features": the backbone's 4 maps (32, 40, 48, 56 channels; 12x20, 6x10, 3x5, 1x2),
     "head_logits": decode_head(features), (1, 150, 12, 20) at stride 4,
     "aux_head_logits": auxiliary_head(features), (1, 150, 3, 5) at stride 16,
     "rdnet_args": the RDNet constructor arguments used,
     "decode_channels", "aux_channels", "num_classes"}

The whole-mode logits of mmseg's ``EncoderDecoder`` are ``head_logits`` resized to the input size
(bilinear, align_corners=False), which is checked here against ``EncoderDecoder.encode_decode`` itself;
the (1, 150, 48, 80) result itself is not stored (2.3 MB; the three files stay under 1 MB together).
The aux logits the same way. Widths are small for the same reason (decode channels 8, aux channels 12).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
RDNET_FILES = ("rdnet/__init__.py", "rdnet/rdnet.py")

# rdnet_tiny's structure at reduced widths (tiny: 64 stem, growth 64/104/128x4/224, 3 layers per stage).
RDNET_ARGS = {
    "num_init_features": 16,
    "growth_rates": [8, 12, 12, 12, 12, 16, 16],
    "num_blocks_list": [2] * 7,
    "is_downsample_block": [None, True, True, False, False, False, True],
    "transition_compression_ratio": 0.5,
    "block_type": ["Block", "Block"] + ["BlockESE"] * 5,
}
DECODE_CHANNELS = 8
AUX_CHANNELS = 12
NUM_CLASSES = 150
IMAGE_SIZE = (48, 80)  # maps of 12x20, 6x10, 3x5, 1x2: odd sizes, non-integer resize ratios

HEAD_CONFIG = {
    "in_channels": [8, 12, 16, 20],
    "channels": 8,
    "pool_scales": (1, 2, 3, 6),
    "num_classes": 7,
    "dropout_ratio": 0.1,
    "align_corners": False,
}
HEAD_FEATURE_SIZES = [(17, 25), (9, 13), (5, 7), (3, 4)]  # a 65x97 image at strides 4, 8, 16, 32


class _MissingOps(types.ModuleType):
    """Stand-in for mmcv.ops: every attribute is a placeholder class that refuses to be built."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)

        def refuse(*args, **kwargs):
            raise RuntimeError(f"mmcv.ops.{name} is a stand-in (mmcv-lite has no compiled ops)")

        placeholder = type(name, (), {"__init__": refuse})
        setattr(self, name, placeholder)
        return placeholder


def import_mmseg():
    sys.modules["mmcv.ops"] = _MissingOps("mmcv.ops")
    import mmseg
    from mmseg.datasets import ADE20KDataset
    from mmseg.models.backbones import TIMMBackbone
    from mmseg.models.decode_heads import FCNHead, UPerHead
    from mmseg.models.segmentors import EncoderDecoder
    return mmseg, ADE20KDataset, TIMMBackbone, FCNHead, UPerHead, EncoderDecoder


def export_rdnet_package(repo: Path, into: Path) -> None:
    """Copy the authors' rdnet package (two files) from a checkout or a git directory into ``into``."""
    for name in RDNET_FILES:
        target = into / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if (repo / name).is_file():
            target.write_bytes((repo / name).read_bytes())
        else:
            text = subprocess.run(["git", "-C", str(repo), "show", f"HEAD:{name}"], check=True,
                                  capture_output=True).stdout
            target.write_bytes(text)


@torch.no_grad()
def randomize(module: nn.Module, gen: torch.Generator) -> None:
    """Random weights everywhere, scaled so activations stay O(1) through a deep random net, and
    BatchNorm running statistics away from (0, 1)."""
    def uniform(shape, low, high):
        return torch.rand(shape, generator=gen) * (high - low) + low

    for mod in module.modules():
        if isinstance(mod, nn.Conv2d):
            fan_in = mod.weight[0].numel()
            mod.weight.copy_(torch.randn(mod.weight.shape, generator=gen) / fan_in ** 0.5)
            if mod.bias is not None:
                mod.bias.copy_(uniform(mod.bias.shape, -0.1, 0.1))
        elif isinstance(mod, (nn.BatchNorm2d, nn.LayerNorm)):
            mod.weight.copy_(uniform(mod.weight.shape, 0.5, 1.5))
            mod.bias.copy_(uniform(mod.bias.shape, -0.2, 0.2))
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.copy_(torch.randn(mod.running_mean.shape, generator=gen) * 0.3)
                mod.running_var.copy_(uniform(mod.running_var.shape, 0.5, 2.0))
                mod.num_batches_tracked.fill_(1000)
    for name, param in module.named_parameters():
        if name.endswith("gamma"):  # RDNet's layer scale: not 1e-6, so every dense layer counts
            param.copy_(uniform(param.shape, 0.2, 1.0))


def make_head_golden(UPerHead, gen: torch.Generator) -> dict:
    cfg = HEAD_CONFIG
    head = UPerHead(in_index=list(range(len(cfg["in_channels"]))), norm_cfg=dict(type="BN"), **cfg)
    randomize(head, gen)
    head.eval()
    features = [torch.randn((1, c, *size), generator=gen)
                for c, size in zip(cfg["in_channels"], HEAD_FEATURE_SIZES)]
    with torch.no_grad():
        logits = head(features)
    return {"state_dict": head.state_dict(), "config": dict(cfg), "features": features, "logits": logits}


def build_upernet_rdnet(EncoderDecoder, in_channels: list[int]):
    norm_cfg = dict(type="BN", requires_grad=True)
    return EncoderDecoder(
        backbone=dict(type="TIMMBackbone", model_name="rdnet_tiny", features_only=True, pretrained=False,
                      checkpoint_path="", **RDNET_ARGS),
        decode_head=dict(type="UPerHead", in_channels=in_channels, in_index=[0, 1, 2, 3],
                         pool_scales=(1, 2, 3, 6), channels=DECODE_CHANNELS, dropout_ratio=0.1,
                         num_classes=NUM_CLASSES, norm_cfg=norm_cfg, align_corners=False),
        auxiliary_head=dict(type="FCNHead", in_channels=in_channels[2], in_index=2, channels=AUX_CHANNELS,
                            num_convs=1, concat_input=False, dropout_ratio=0.1, num_classes=NUM_CLASSES,
                            norm_cfg=norm_cfg, align_corners=False),
        test_cfg=dict(mode="whole"),
    )


def backbone_channels(timm) -> list[int]:
    probe = timm.create_model("rdnet_tiny", features_only=True, pretrained=False, **RDNET_ARGS)
    return [info["num_chs"] for info in probe.feature_info.get_dicts()]


def config_text(in_channels: list[int]) -> str:
    """The model part of an mmseg 0.x config for this model, as the checkpoint's meta carries one."""
    return (
        "norm_cfg = dict(type='SyncBN', requires_grad=True)\n"
        f"model = dict(type='EncoderDecoder', pretrained=None,\n"
        f"    backbone=dict(type='RDNetBackbone', model_name='rdnet_tiny', features_only=True, "
        f"pretrained=False, **{RDNET_ARGS!r}),\n"
        f"    decode_head=dict(type='UPerHead', in_channels={in_channels}, in_index=[0, 1, 2, 3], "
        f"pool_scales=(1, 2, 3, 6), channels={DECODE_CHANNELS}, dropout_ratio=0.1, "
        f"num_classes={NUM_CLASSES}, norm_cfg=norm_cfg, align_corners=False),\n"
        f"    auxiliary_head=dict(type='FCNHead', in_channels={in_channels[2]}, in_index=2, "
        f"channels={AUX_CHANNELS}, num_convs=1, concat_input=False, dropout_ratio=0.1, "
        f"num_classes={NUM_CLASSES}, norm_cfg=norm_cfg, align_corners=False),\n"
        "    test_cfg=dict(mode='whole'))\n"
    )


def make_rdnet_golden(EncoderDecoder, ADE20KDataset, timm, gen: torch.Generator) -> tuple[dict, dict]:
    in_channels = backbone_channels(timm)
    model = build_upernet_rdnet(EncoderDecoder, in_channels)
    randomize(model, gen)
    model.eval()
    image = torch.randn((1, 3, *IMAGE_SIZE), generator=gen)
    with torch.no_grad():
        features = list(model.extract_feat(image))
        head_logits = model.decode_head(features)
        aux_head_logits = model.auxiliary_head(features)
        whole = model.encode_decode(image, [dict(img_shape=IMAGE_SIZE, ori_shape=IMAGE_SIZE)])
    resized = F.interpolate(head_logits, size=IMAGE_SIZE, mode="bilinear", align_corners=False)
    assert torch.equal(whole, resized), "EncoderDecoder's whole-mode logits are not the resized head output"
    state_dict = {k: v for k, v in model.state_dict().items()
                  if k.startswith(("backbone.", "decode_head.", "auxiliary_head."))}
    assert len(state_dict) == len(model.state_dict()), "unexpected keys outside backbone/decode/aux heads"
    assert any(k.startswith("backbone.timm_model.stem.stem.") for k in state_dict)
    assert any(k.startswith("backbone.timm_model.dense_stages_6.") for k in state_dict)
    meta_info = ADE20KDataset.METAINFO
    optimizer = torch.optim.AdamW(model.parameters(), lr=8e-5, betas=(0.9, 0.999), weight_decay=0.03)
    checkpoint = {
        "meta": {
            "mmseg_version": "0.22.1",
            "config": config_text(in_channels),
            "CLASSES": tuple(meta_info["classes"]),
            "PALETTE": [list(c) for c in meta_info["palette"]],
            "epoch": 1,
            "iter": 160000,
        },
        "state_dict": state_dict,
        "optimizer": optimizer.state_dict(),
    }
    io = {
        "input": image,
        "features": features,
        "head_logits": head_logits,
        "aux_head_logits": aux_head_logits,
        "rdnet_args": dict(RDNET_ARGS),
        "decode_channels": DECODE_CHANNELS,
        "aux_channels": AUX_CHANNELS,
        "num_classes": NUM_CLASSES,
    }
    return checkpoint, io


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rdnet-repo", type=Path, required=True,
                        help="a checkout of naver-ai/rdnet, or its git directory")
    parser.add_argument("--out", type=Path, default=HERE / "data" / "golden")
    args = parser.parse_args(argv)
    _, ADE20KDataset, _, _, UPerHead, EncoderDecoder = import_mmseg()
    import timm

    with tempfile.TemporaryDirectory() as tmp:
        export_rdnet_package(args.rdnet_repo, Path(tmp))
        sys.path.insert(0, tmp)
        import rdnet  # noqa: F401  (registers the authors' rdnet_* in timm, replacing timm's own)
        sys.path.remove(tmp)
    assert timm.models.model_entrypoint("rdnet_tiny").__module__ == "rdnet.rdnet"

    args.out.mkdir(parents=True, exist_ok=True)
    head = make_head_golden(UPerHead, torch.Generator().manual_seed(0))
    checkpoint, io = make_rdnet_golden(EncoderDecoder, ADE20KDataset, timm, torch.Generator().manual_seed(1))
    outputs = {"upernet_head.pt": head, "upernet_rdnet_authors.pth": checkpoint,
               "upernet_rdnet_authors_io.pt": io}
    for name, obj in outputs.items():
        torch.save(obj, args.out / name)
        torch.load(args.out / name, weights_only=True)  # the suite reads them this way
        print(f"wrote {args.out / name} ({(args.out / name).stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
