"""Build each registered DenseNet and print its feature shapes and parameter counts.

    python tools/backbone_summary.py [--size 224] [--output-stride 16] [--names densenet121 ...]
"""
import argparse

import torch

from segdense.backbones import build_backbone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", nargs="+", default=["densenet121", "densenet169", "densenet201", "densenet161"])
    parser.add_argument("--size", type=int, default=224, help="input height and width")
    parser.add_argument("--output-stride", type=int, default=None)
    args = parser.parse_args()
    x = torch.randn(1, 3, args.size, args.size)
    for name in args.names:
        model = build_backbone(name, output_stride=args.output_stride).eval()
        params = sum(p.numel() for p in model.parameters())
        with torch.inference_mode():
            feats = model.forward_features(x)
        print(f"{name}: {params:,} parameters (features only), output stride {model.output_stride}")
        for spec, f in zip(model.feature_info, feats.values()):
            print(f"  {spec.name:<7} stride {spec.stride:>2}  {tuple(f.shape)}")


if __name__ == "__main__":
    main()
