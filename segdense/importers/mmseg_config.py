"""An mmseg config as a checkpoint's meta carries it (``meta['config']``: the text of mmcv's ``Config.pretty_text``,
a Python file of assignments such as ``model = dict(decode_head=dict(...), ...)``), read as plain values.

The text is parsed with :mod:`ast` and never run: literals, ``dict(...)`` calls (``**`` expansions included),
lists, tuples and dict displays become Python values, and a name refers to an earlier top-level assignment
(``norm_cfg=norm_cfg``). Anything else (a call, an expression) becomes an :class:`Unreadable` holding its source,
so a key is only ever read from its own dict.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Hashable, Sequence

from segdense.backbones.features import FeatureSpec
from segdense.errors import CheckpointError
from segdense.heads import aux_feature, pyramid_features

MMSEG_DROPOUT = 0.1  # mmseg's BaseDecodeHead default dropout_ratio (segdense's heads default to it too)
DEFAULT_SLIDE_WINDOW = [512, 512]  # the slide window of mmseg's ADE20K configs, the authors' included


@dataclass(frozen=True)
class Unreadable:
    """A value the reader does not evaluate (a call other than ``dict``, arithmetic, an unknown name)."""

    source: str

    def __repr__(self) -> str:
        return self.source


def read_config(text: str, path) -> dict:
    """The top-level assignments of ``text`` as ``{name: value}``; the file at ``path`` is named in the error
    when the text does not parse."""
    try:
        tree = ast.parse(text)
    except SyntaxError as e:
        raise CheckpointError(f"{path}: its meta['config'] is not Python (line {e.lineno}: {e.msg}); segdense reads "
                              "the heads' settings from it (mmcv's Config.pretty_text)") from None
    names: dict = {}
    for statement in tree.body:
        if isinstance(statement, ast.Assign):
            value = _value(statement.value, names, text)
            for target in statement.targets:
                if isinstance(target, ast.Name):
                    names[target.id] = value
    return names


def _value(node: ast.AST, names: dict, text: str):
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict" and not node.args:
        return _merged([(kw.arg, kw.value) for kw in node.keywords], node, names, text)
    if isinstance(node, ast.Dict):
        keys = [None if k is None else _value(k, names, text) for k in node.keys]
        return _merged(list(zip(keys, node.values)), node, names, text)
    if isinstance(node, (ast.List, ast.Tuple)):
        items = [_value(e, names, text) for e in node.elts]
        return items if isinstance(node, ast.List) else tuple(items)
    if isinstance(node, ast.Name) and node.id in names:
        return names[node.id]
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return Unreadable(ast.get_source_segment(text, node) or ast.dump(node))


def _merged(pairs: list, node: ast.AST, names: dict, text: str):
    """A dict of ``(key, value node)`` pairs, a ``None`` key marking a ``**`` expansion."""
    out = {}
    for key, value_node in pairs:
        value = _value(value_node, names, text)
        if key is None and isinstance(value, dict):
            out.update(value)
        elif key is not None and isinstance(key, Hashable):
            out[key] = value
        else:  # ** of something else, or a key a dict cannot hold
            return Unreadable(ast.get_source_segment(text, node) or ast.dump(node))
    return out


def model_part(config: dict, part: str, path) -> dict:
    """``model[part]`` (``decode_head``, ``auxiliary_head``, ``test_cfg``); a ``test_cfg`` may also sit at the top
    level (mmseg before 0.13). Empty when the config has no such dict (mmseg's defaults apply)."""
    model = config.get("model")
    found = model.get(part) if isinstance(model, dict) else None
    if found is None and part == "test_cfg":
        found = config.get(part)
    if found is not None and not isinstance(found, dict):
        raise refused(path, part, found, "a dict(...) of literal values")
    return found or {}


def refused(path, key: str, value, expected: str) -> CheckpointError:
    return CheckpointError(f"{path}: its config's {key}={value!r}: expected {expected}")


def check_align_corners(head: dict, part: str, path, what: str, hint: str = "") -> None:
    """mmseg's ``align_corners`` (default False) must be False: segdense resizes ``what`` with
    ``align_corners=False``."""
    value = head.get("align_corners", False)
    if value not in (False, None):
        raise refused(path, f"{part}.align_corners", value, f"False or absent: segdense resizes {what} with "
                      f"align_corners=False, so the converted model would not give this file's outputs{hint}")


def dropout_ratio(head: dict, part: str, path) -> float:
    """The head's ``dropout_ratio``, mmseg's default where it gives none."""
    value = head.get("dropout_ratio", MMSEG_DROPOUT)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise refused(path, f"{part}.dropout_ratio", value, "a number in [0, 1)")
    return float(value)


def _outputs(features: Sequence[FeatureSpec]) -> str:
    return f"the backbone's {len(features)} outputs ({', '.join(s.name for s in features)})"


def _position(index, features: Sequence[FeatureSpec]) -> int | None:
    """A Python index (negative ones count from the end) into the backbone's outputs; None when it is none."""
    n = len(features)
    return index % n if type(index) is int and -n <= index < n else None


def decode_features(head: dict, features: Sequence[FeatureSpec], path) -> list[str] | None:
    """``decode_head.in_index`` (mmseg: positions among the backbone's outputs) as UperNet's ``in_features``;
    None where they are the head's default (the backbone's pyramid) or the config gives none."""
    value = head.get("in_index")
    if value is None:
        return None
    positions = [_position(i, features) for i in value] if isinstance(value, (list, tuple)) and value else [None]
    if None in positions or any(b <= a for a, b in zip(positions, positions[1:])):
        raise refused(path, "decode_head.in_index", value, f"a list of increasing positions among {_outputs(features)}"
                      ": segdense's UperNet takes its features shallow to deep")
    names = [features[i].name for i in positions]
    return None if names == [s.name for s in pyramid_features(features)] else names


def aux_in_feature(head: dict, features: Sequence[FeatureSpec], path) -> str | None:
    """``auxiliary_head.in_index`` as the aux head's ``in_feature``; None where it is the head's default."""
    value = head.get("in_index")
    if value is None:
        return None
    position = _position(value, features)
    if position is None:
        raise refused(path, "auxiliary_head.in_index", value, f"one int, a position among {_outputs(features)}; "
                      "pass aux=false to drop the aux head")
    name = features[position].name
    return None if name == aux_feature(features).name else name


def slide_window(test_cfg: dict, path, notes: list[str]) -> list[int]:
    """``test_cfg.crop_size`` (mmseg's slide window, height and width); 512x512 where the config gives none."""
    value = test_cfg.get("crop_size")
    if value is None:
        notes.append(f"crop size {DEFAULT_SLIDE_WINDOW[0]}x{DEFAULT_SLIDE_WINDOW[1]} (the slide window; the file's "
                     "test_cfg gives none, and its training crop is not a test window)")
        return list(DEFAULT_SLIDE_WINDOW)
    if not (isinstance(value, (list, tuple)) and len(value) == 2 and all(type(v) is int and v > 0 for v in value)):
        raise refused(path, "test_cfg.crop_size", value, "(height, width), two positive ints")
    return [value[0], value[1]]
