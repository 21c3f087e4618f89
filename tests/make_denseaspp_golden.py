"""Make the golden file that tests segdense's DenseASPP-161 (``densenet161 output_stride=8 final_transition=true`` +
``denseaspp original=true``) against the authors' code. Run it once; the test suite only reads the file it writes
(tests/data/golden/denseaspp161.pt) and never imports the authors' code.

Set-up: the authors' ``models/DenseASPP.py`` and ``cfgs/DenseASPP161.py`` (DeepMotionAIResearch/DenseASPP, no
licence file: keep them outside this repository) in one folder, named with ``--authors-dir``. Their code was written
for PyTorch 0.3.1; port ``DenseASPP.py`` to current PyTorch with the minimal edits and no others:

- module names without dots: ``add_module('norm.1', ...)`` and the other ``norm.N``/``relu.N``/``conv.N`` names
  become ``norm_1`` etc. (PyTorch >= 0.4 refuses dots); this script turns the state_dict keys back into the dotted
  names their checkpoints have;
- both ``nn.Upsample(..., mode='bilinear')`` get ``align_corners=True``, the behaviour of 0.3.1's bilinear upsampling.

Run, from the repository root:

    python tests/make_denseaspp_golden.py --authors-dir DIR [--out tests/data/golden/denseaspp161.pt]

The authors' model is built as their inference.py builds it (``DenseASPP(Model_CFG, n_class=19, output_stride=8)``);
every floating-point tensor of its state_dict is refilled by ``make_hardnet_golden.seeded_state`` (one generator, in
state_dict order, in the checkpoint's dotted key names), and it runs in eval mode, float64, on one fixed input.
Written (the weights are not stored; the test regenerates them from the keys and shapes)::

    {"input": (1, 3, 48, 64) float64, "keys": [(dotted key, shape), ...] in state_dict order, without the
     num_batches_tracked counters (0.3.1 had none), "parameters": the parameter count, "logits": (1, 19, 48, 64)}
"""
from __future__ import annotations

import argparse
import importlib.util
import re
import sys
from pathlib import Path

import torch

from make_hardnet_golden import seeded_state

INPUT_SHAPE = (1, 3, 48, 64)
_PORTED_NAME = re.compile(r"\.(norm|relu|conv)_([12])\.")


def dotted(key: str) -> str:
    """The checkpoint's key for a key of the ported model (``norm_1`` -> ``norm.1``)."""
    return _PORTED_NAME.sub(lambda m: f".{m.group(1)}.{m.group(2)}.", key)


def seeded_checkpoint(keys: list[tuple[str, tuple[int, ...]]]) -> dict[str, torch.Tensor]:
    """The seeded weights (float64) in the checkpoint's key names, from the keys and shapes alone."""
    return seeded_state({k: torch.empty(shape, dtype=torch.float64) for k, shape in keys})


def golden_input() -> torch.Tensor:
    return torch.randn(INPUT_SHAPE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def _load(folder: Path, name: str):
    path = folder / name
    if not path.is_file():
        raise SystemExit(f"{name} is not in {folder}: place the authors' ported file there or pass --authors-dir")
    spec = importlib.util.spec_from_file_location(f"authors_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--authors-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "data" / "golden" / "denseaspp161.pt")
    args = parser.parse_args(argv)
    cfg = _load(args.authors_dir, "DenseASPP161.py").Model_CFG
    model = _load(args.authors_dir, "DenseASPP.py").DenseASPP(cfg, n_class=19, output_stride=8).double().eval()
    state = model.state_dict()
    keys = [(dotted(k), tuple(v.shape)) for k, v in state.items() if not k.endswith("num_batches_tracked")]
    seeded = seeded_checkpoint(keys)
    model.load_state_dict({k: seeded.get(dotted(k), v) for k, v in state.items()}, strict=True)
    x = golden_input()
    with torch.no_grad():
        logits = model(x.clone())
    golden = {"input": x, "keys": keys, "parameters": sum(p.numel() for p in model.parameters()), "logits": logits}
    print("parameters", golden["parameters"], "logits", tuple(logits.shape), float(logits.abs().max()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(golden, args.out)
    print("wrote", args.out)


if __name__ == "__main__":
    sys.exit(main())
