"""Make the golden file that tests segdense's HarDNets against the authors' code. Run it once; the normal test
suite only reads the file it writes (tests/data/golden/hardnet.pt) and never imports the authors' code.

Set-up: place the authors' ``hardnet.py`` (PingoLH/Pytorch-HarDNet, MIT; the one at the repository root, which
defines ``HarDNet(depth_wise, arch, pretrained, weight_path)``) beside this script, or name its folder with
``--authors-dir``. It needs only torch. Run, from the repository root:

    python tests/make_hardnet_golden.py [--authors-dir DIR] [--out tests/data/golden/hardnet.pt]

For each published net (HarDNet-39DS, 68DS, 68, 85) the authors' model is built without pretrained weights, every
floating-point tensor of its state_dict is refilled by :func:`seeded_state` (a fixed generator, in state_dict order,
BatchNorm running statistics included), and the model runs in eval mode, float64, on one fixed 1x3x64x96 input.
Written (a small file; the weights are not stored, the test regenerates them from the same keys)::

    {"input": (1, 3, 64, 96) float64,
     "<name>": {"keys": the state_dict's key names in order, "parameters": the parameter count,
                "logits": (1, 1000), "features": the last map before the classifier, (1, C, 2, 3)}}

The file is made on the CPU from fixed seeds, so a rerun with the same torch writes the same numbers.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import torch

NETS = {"hardnet39ds": (True, 39), "hardnet68ds": (True, 68), "hardnet68": (False, 68), "hardnet85": (False, 85)}
INPUT_SHAPE = (1, 3, 64, 96)


def seeded_state(state: dict[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    """``state`` with every floating-point tensor refilled from one generator, in key order: conv and linear
    weights uniform in +-1/sqrt(fan_in); BatchNorm weights in [0.5, 1.5], biases and running means in
    [-0.1, 0.1], running variances in [0.5, 1.5]; linear biases in [-0.1, 0.1]. Integer tensors are kept."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, value in state.items():
        if not value.is_floating_point():
            out[key] = value
            continue
        u = torch.rand(value.shape, generator=g, dtype=torch.float64)
        if value.dim() > 1:
            fan_in = value[0].numel()
            out[key] = (2 * u - 1) / fan_in ** 0.5
        elif key.endswith(("running_var", "norm.weight")) or (key.endswith(".weight") and value.dim() == 1):
            out[key] = 0.5 + u
        else:
            out[key] = 0.2 * u - 0.1
    return out


def golden_input() -> torch.Tensor:
    return torch.randn(INPUT_SHAPE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def authors_module(folder: Path):
    """The authors' ``hardnet.py`` in ``folder``, loaded as a module (both golden scripts read a file of that name)."""
    path = folder / "hardnet.py"
    if not path.is_file():
        raise SystemExit(f"the authors' hardnet.py is not in {folder}: place it there or pass --authors-dir")
    spec = importlib.util.spec_from_file_location("authors_hardnet", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--authors-dir", type=Path, default=Path(__file__).parent)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "data" / "golden" / "hardnet.pt")
    args = parser.parse_args(argv)
    authors = authors_module(args.authors_dir)
    x = golden_input()
    golden = {"input": x}
    for name, (depthwise, arch) in NETS.items():
        model = authors.HarDNet(depth_wise=depthwise, arch=arch, pretrained=False).double().eval()
        model.load_state_dict(seeded_state(model.state_dict()))
        with torch.no_grad():
            features = x
            for module in model.base[:-1]:
                features = module(features)
            logits = model.base[-1](features)
        golden[name] = {"keys": list(model.state_dict()), "parameters": sum(p.numel() for p in model.parameters()),
                        "logits": logits, "features": features}
        print(name, golden[name]["parameters"], tuple(features.shape))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(golden, args.out)
    print("wrote", args.out)


if __name__ == "__main__":
    sys.exit(main())
