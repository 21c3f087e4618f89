"""torch.hub entry points.

    model = torch.hub.load("path/to/segdense", "densenet121", source="local", output_stride=16)
    model = torch.hub.load("path/to/segdense", "build_model", source="local", backbone="densenet121",
                           head="deeplabv3plus", num_classes=21)
    model = torch.hub.load("path/to/segdense", "load_model", source="local", path="model.safetensors")

Backbone entry points take the builders' arguments (``output_stride``, ``initial_output_stride``, ``num_classes``,
``pretrained="imagenet"`` or a weights file, ...). The DenseNets need only torch (plus safetensors for .safetensors
files); ``resnet50``/``resnet101`` (the reference backbones) also torchvision. ``fcdensenet56/67/103`` are the
FC-DenseNet encoder-decoders (with ``build_model(..., head="tiramisu")`` for logits); ``rdnet_tiny/small/base/large``
and ``rdnet_custom`` the RDNets ("DenseNets Reloaded"), ``pretrained=`` a timm or authors' ImageNet file;
``hardnet39ds/68ds/68/85`` the HarDNets and ``fchardnet70`` FC-HarDNet-70 (with ``head="fchardnet"`` for logits).
"""
dependencies = ["torch", "torchvision"]

from segdense.backbones import densenet121, densenet161, densenet169, densenet201, densenet_custom  # noqa: E402,F401
from segdense.backbones import fcdensenet56, fcdensenet67, fcdensenet103, fcdensenet_custom  # noqa: E402,F401
from segdense.backbones import rdnet_base, rdnet_custom, rdnet_large, rdnet_small, rdnet_tiny  # noqa: E402,F401
from segdense.backbones import resnet50, resnet101  # noqa: E402,F401  (torchvision's ResNets, dilated)
from segdense.backbones import hardnet39ds, hardnet68, hardnet68ds, hardnet85, fchardnet70  # noqa: E402,F401
from segdense.inference.loading import load_model  # noqa: E402,F401
from segdense.models import build_model  # noqa: E402,F401
