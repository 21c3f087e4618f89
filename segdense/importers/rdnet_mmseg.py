"""The RDNet authors' ADE20K checkpoints (naver-ai/rdnet, segmentation/: mmseg 0.x ``EncoderDecoder`` with
UperNet and an FCN auxiliary head).

Layout: ``{"meta": {"CLASSES", "PALETTE", "config", ...}, "state_dict", "optimizer"}``; the backbone under
``backbone.timm_model.`` in timm's features_only names (``stem.stem.*``, ``dense_stages_N.*``), mmseg's
``UPerHead`` under ``decode_head.``, its ``FCNHead`` under ``auxiliary_head.``. What the shapes do not say
(pool scales, dropout, the features each head reads, the slide window) comes from the mmseg config in ``meta``
(:mod:`.mmseg_config`), each key from its own dict.
"""
from __future__ import annotations

import re

import torch

from segdense.backbones.features import FeatureSpec
from segdense.backbones.rdnet_weights import rdnet_timm_keys
from segdense.backbones.registry import BACKBONES
from segdense.errors import CheckpointError, config_values

from .architecture import RDNET_NAMES, chosen_block, shape_of
from .mmseg_config import (MMSEG_DROPOUT, aux_in_feature, check_align_corners, decode_features, dropout_ratio,
                           model_part, read_config, refused, slide_window)
from .result import Imported

NAME = "rdnet-mmseg"
DESCRIPTION = "the RDNet authors' mmseg ADE20K checkpoints (backbone.timm_model.*, decode_head.*, auxiliary_head.*)"
BACKBONE = "backbone.timm_model."
AUX_KEYS = {"convs.0.conv.weight": "convs.0.0.weight", "convs.0.bn.weight": "convs.0.1.weight",
            "convs.0.bn.bias": "convs.0.1.bias", "convs.0.bn.running_mean": "convs.0.1.running_mean",
            "convs.0.bn.running_var": "convs.0.1.running_var",
            "convs.0.bn.num_batches_tracked": "convs.0.1.num_batches_tracked",
            "conv_seg.weight": "classifier.1.weight", "conv_seg.bias": "classifier.1.bias"}
# The authors' img_norm_cfg (mean 123.675, 116.28, 103.53, std 58.395, 57.12, 57.375 on 0-255): ImageNet's.
MMSEG_NORMALIZE = {"type": "Normalize", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
# Their test pipeline resizes to (2048, 512) keeping the aspect ratio (configs/_base_/datasets/ade20k.py); the
# logits are resized back to the image's own size, as segdense's Predictor and mmseg both do.
MMSEG_TEST_RESIZE = {"type": "KeepRatioResize", "scale": [2048, 512]}


def matches(state: dict[str, torch.Tensor]) -> bool:
    return any(k.startswith(BACKBONE) for k in state) and any(k.startswith("decode_head.") for k in state)


def rename(state: dict[str, torch.Tensor], keep_aux: bool) -> dict[str, torch.Tensor]:
    """segdense's names: ``backbone.`` + timm's RDNet names, ``head.`` + UPerHead's own, ``aux_head.`` + AuxHead's
    (or no aux head). Keys of any other part stay as they are, so the shape check names them."""
    backbone = rdnet_timm_keys({k[len(BACKBONE):]: v for k, v in state.items() if k.startswith(BACKBONE)})
    out = {f"backbone.{k}": v for k, v in backbone.items()}
    for key, value in state.items():
        if key.startswith("decode_head."):
            out["head." + key[len("decode_head."):]] = value
        elif key.startswith("auxiliary_head."):
            if keep_aux:
                rest = key[len("auxiliary_head."):]
                out["aux_head." + AUX_KEYS.get(rest, rest)] = value
        elif not key.startswith(BACKBONE):
            out[key] = value
    return out


def head_block(state: dict[str, torch.Tensor], decode: dict, features: list[FeatureSpec], path,
               notes: list[str]) -> dict:
    """The ``upernet`` block: channels from the bottleneck conv, pool scales from the decode head's config (their
    number from the pyramid's convs), its dropout (mmseg's default where it gives none) and its in_index as
    ``in_features``; an ``align_corners`` segdense cannot follow is refused."""
    check_align_corners(decode, "decode_head", path, "the head's levels and its logits")
    channels = int(shape_of(state, "decode_head.bottleneck.conv.weight", path)[0])
    count = sum(1 for k in state if re.match(r"decode_head\.psp_modules\.\d+\.1\.conv\.weight$", k))
    scales = decode.get("pool_scales")
    if scales is None:
        if count != 4:
            raise CheckpointError(f"{path}: its pyramid pooling has {count} scales and its meta does not say which "
                                  "(expected the authors' 4 scales 1, 2, 3, 6)")
        scales = (1, 2, 3, 6)
        notes.append("pool scales 1, 2, 3, 6 (mmseg's; the file does not record them)")
    elif not isinstance(scales, (list, tuple)) or len(scales) != count:
        raise refused(path, "decode_head.pool_scales", scales, f"{count} scales, one per pyramid pooling branch of "
                      "its weights")
    block = {"name": "upernet", "channels": channels, "pool_scales": list(scales),
             "dropout": dropout_ratio(decode, "decode_head", path)}
    in_features = decode_features(decode, features, path)
    if in_features is not None:
        block["in_features"] = in_features
    return block


def aux_block(state: dict[str, torch.Tensor], aux: dict, features: list[FeatureSpec], path) -> dict:
    """The FCN aux head's arguments (segdense's ``aux``: one 3x3 conv, ``channels`` wide) where they are not its
    defaults: width, dropout and the feature it reads (the config's in_index)."""
    check_align_corners(aux, "auxiliary_head", path, "the aux head's logits", "; pass aux=false to drop the aux head")
    convs = {k.split(".")[2] for k in state if k.startswith("auxiliary_head.convs.")}
    concat = "auxiliary_head.conv_cat.conv.weight" in state
    if len(convs) != 1 or concat:
        raise CheckpointError(f"{path}: its auxiliary head has {len(convs)} convs"
                              f"{' and concatenates its input' if concat else ''}; segdense's aux head is mmseg's "
                              "FCNHead with one conv: pass aux=false to drop it")
    channels = int(shape_of(state, "auxiliary_head.convs.0.conv.weight", path)[0])
    arguments = {} if channels == 256 else {"channels": channels}  # 256: the aux head's default, the authors' width
    dropout = dropout_ratio(aux, "auxiliary_head", path)
    if dropout != MMSEG_DROPOUT:
        arguments["dropout"] = dropout
    in_feature = aux_in_feature(aux, features, path)
    if in_feature is not None:
        arguments["in_feature"] = in_feature
    return arguments


def backbone_features(block: dict, path) -> list[FeatureSpec]:
    """The outputs of the backbone ``block`` builds (built on the meta device), in order: mmseg's in_index counts
    them."""
    arguments = dict(block)
    builder = BACKBONES.get(arguments.pop("name"))
    with config_values(f"the backbone {path} describes"), torch.device("meta"):
        return list(builder(**arguments).feature_info)


def import_checkpoint(checkpoint: dict, path, backbone: str | None, keep_aux: bool, output_stride: int) -> Imported:
    state, meta = checkpoint["state_dict"], checkpoint.get("meta") or {}
    notes: list[str] = []
    config = read_config(meta["config"], path) if isinstance(meta.get("config"), str) else {}
    weights = rename(state, keep_aux)
    trunk = {k[len("backbone."):]: v for k, v in weights.items() if k.startswith("backbone.")}
    num_classes = int(shape_of(state, "decode_head.conv_seg.weight", path)[0])
    block = chosen_block(backbone, RDNET_NAMES, "rdnet_custom", (trunk, path))
    block.setdefault("output_stride", output_stride)
    features = backbone_features(block, path)
    has_aux = any(k.startswith("auxiliary_head.") for k in state)
    head = head_block(state, model_part(config, "decode_head", path), features, path, notes)
    model_config = {"backbone": block, "head": head, "num_classes": num_classes, "aux_loss": has_aux and keep_aux}
    aux_arguments = (aux_block(state, model_part(config, "auxiliary_head", path), features, path)
                     if model_config["aux_loss"] else {})
    if aux_arguments:
        model_config["aux_head"] = aux_arguments
    notes.append("auxiliary head " + ("kept (aux_loss=true)" if model_config["aux_loss"] else
                                      "dropped (aux=false)" if has_aux else "absent from the file"))
    names, palette = class_names(meta, num_classes, path, notes)
    return Imported(layout=NAME, weights=weights, model_config=model_config, notes=notes,
                    dataset={"name": "ade20k" if num_classes == 150 else "unknown", "class_names": names,
                             "palette": palette},
                    config={"augmentation": {"eval": [MMSEG_TEST_RESIZE, MMSEG_NORMALIZE]},
                            "crop_size": slide_window(model_part(config, "test_cfg", path), path, notes)})


def class_names(meta: dict, num_classes: int, path, notes: list[str]) -> tuple[list[str], list[list[int]]]:
    """``meta["CLASSES"]`` and ``meta["PALETTE"]``; without them, indices and no palette (segdense's default)."""
    names, palette = meta.get("CLASSES"), meta.get("PALETTE")
    if names is None:
        notes.append(f"the file names no classes: they are called 0..{num_classes - 1}")
        names = [str(i) for i in range(num_classes)]
    if len(names) != num_classes:
        raise CheckpointError(f"{path}: meta['CLASSES'] names {len(names)} classes but its head predicts "
                              f"{num_classes}")
    if palette is not None and (len(palette) != num_classes or any(len(c) != 3 for c in palette)):
        raise CheckpointError(f"{path}: meta['PALETTE'] is not {num_classes} [r, g, b] colours")
    return [str(n) for n in names], [[int(v) for v in c] for c in palette] if palette is not None else []
