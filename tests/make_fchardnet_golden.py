"""Make the golden file that tests segdense's FC-HarDNet-70 against the authors' code. Run it once; the normal test
suite only reads the file it writes (tests/data/golden/fchardnet.pt) and never imports the authors' code.

Set-up: place the authors' ``ptsemseg/models/hardnet.py`` (PingoLH/FCHarDNet, MIT), which defines
``hardnet(n_classes)``, beside this script, or name its folder with ``--authors-dir``. Its newer revisions import
``CatConv2d`` (a CUDA extension used only by the fused inference form, ``v2_transform``); the training model does not
use it, so when the import fails a stand-in module is installed under that name before loading the file. It needs
only torch. Run, from the repository root:

    python tests/make_fchardnet_golden.py [--authors-dir DIR] [--out tests/data/golden/fchardnet.pt]

The authors' model is built at 19 classes, every floating-point tensor of its state_dict is refilled by
``make_hardnet_golden.seeded_state`` (a fixed generator, in state_dict order, BatchNorm running statistics
included), and the model runs in eval mode, float64, on one fixed 1x3x66x70 input (sizes that the stride-2 convs and
pools do not divide, so the upsampling to each skip's size is exercised). Written (the weights are not stored; the
test regenerates them from the same keys)::

    {"input": (1, 3, 66, 70) float64, "keys": the state_dict's key names in order,
     "parameters": the parameter count, "logits": (1, 19, 66, 70) float64}

The file is made on the CPU from fixed seeds, so a rerun with the same torch writes the same numbers.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import types
from pathlib import Path

import torch
import torch.nn as nn

from make_hardnet_golden import authors_module, seeded_state

NUM_CLASSES = 19
INPUT_SHAPE = (1, 3, 66, 70)


def golden_input() -> torch.Tensor:
    return torch.randn(INPUT_SHAPE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def _install_catconv_stand_in() -> None:
    """``CatConv2d.catconv2d.CatConv2d``: a module that fails if used; only ``v2_transform`` builds one."""
    if importlib.util.find_spec("CatConv2d") is not None:
        return

    class CatConv2d(nn.Module):
        def __init__(self, *args, **kwargs):
            raise RuntimeError("the CatConv2d stand-in is not a model part: the golden file uses the training form")

    package, module = types.ModuleType("CatConv2d"), types.ModuleType("CatConv2d.catconv2d")
    module.CatConv2d = CatConv2d
    package.catconv2d = module
    sys.modules.update({"CatConv2d": package, "CatConv2d.catconv2d": module})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--authors-dir", type=Path, default=Path(__file__).parent)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "data" / "golden" / "fchardnet.pt")
    args = parser.parse_args(argv)
    _install_catconv_stand_in()
    model = authors_module(args.authors_dir).hardnet(n_classes=NUM_CLASSES).double().eval()
    model.load_state_dict(seeded_state(model.state_dict()))
    x = golden_input()
    with torch.no_grad():
        logits = model(x)
    golden = {"input": x, "keys": list(model.state_dict()),
              "parameters": sum(p.numel() for p in model.parameters()), "logits": logits}
    print("parameters", golden["parameters"], "logits", tuple(logits.shape))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(golden, args.out)
    print("wrote", args.out)


if __name__ == "__main__":
    sys.exit(main())
