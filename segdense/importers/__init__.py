"""Importers: other programs' checkpoints in segdense's names, one module per source format.

Each format module has ``NAME``, ``DESCRIPTION``, ``matches(state_dict)``, a pure ``rename`` from its names to
segdense's, and ``import_checkpoint`` that reads the architecture off the shapes (and the file's ``meta``). The
shape check and its error are :func:`segdense.importers.reading.check_fits`; :func:`convert_checkpoint` writes
the result as a segdense checkpoint (a whole model) or a backbone weights file.
"""
from .convert import LAYOUTS, convert_checkpoint, import_file
from .result import Imported

__all__ = ["Imported", "LAYOUTS", "convert_checkpoint", "import_file"]
