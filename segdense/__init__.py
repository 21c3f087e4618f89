"""segdense: semantic segmentation on DenseNet backbones."""
__version__ = "0.1.0"
