"""Small HTML building blocks for the reports: escaped tables, figures and a page with inline CSS (no scripts,
no external files besides the PNGs beside the page, so it opens from disk)."""
from __future__ import annotations

import html
import math
import os
from pathlib import Path
from typing import Sequence

from segdense.inference.writers import atomic_write_bytes

CSS = """
body { font-family: system-ui, sans-serif; margin: 24px auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 8px 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f3f3f3; } td.name, th.name { text-align: left; }
figure { display: inline-block; margin: 4px; vertical-align: top; } figcaption { font-size: 0.8em; }
img { max-width: 100%; image-rendering: pixelated; } .meta { color: #666; font-size: 0.9em; }
.swatch { display: inline-block; width: 12px; height: 12px; border: 1px solid #333; margin: 0 4px 0 12px; }
.row img { height: 160px; }
"""


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def percent(value: float, digits: int = 2) -> str:
    """``93.83`` for 0.9383; ``n/a`` for NaN (a class that never occurs)."""
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.{digits}f}"


def table(header: Sequence[str], rows: Sequence[Sequence], name_columns: int = 1, attrs: str = "") -> str:
    """A table; the first ``name_columns`` columns are left-aligned text."""
    def cell(tag, k, v):
        css = ' class="name"' if k < name_columns else ""
        return f"<{tag}{css}>{esc(v)}</{tag}>"

    head = "<tr>" + "".join(cell("th", k, h) for k, h in enumerate(header)) + "</tr>"
    body = "".join("<tr>" + "".join(cell("td", k, v) for k, v in enumerate(r)) + "</tr>" for r in rows)
    return f"<table{(' ' + attrs) if attrs else ''}>{head}{body}</table>"


def image(src: str, alt: str, caption: str = "", width: int | None = None) -> str:
    """An <img> (shown ``width`` pixels wide when given, e.g. to enlarge small label maps), with a caption."""
    size = f' style="width: {int(width)}px"' if width else ""
    fig = f'<img src="{esc(src)}" alt="{esc(alt)}"{size}>'
    return f"<figure>{fig}<figcaption>{esc(caption)}</figcaption></figure>" if caption else fig


def legend(class_names: Sequence[str], palette: Sequence[Sequence[int]]) -> str:
    """Colour swatches with class names (the colours of the label and prediction images)."""
    items = "".join(f'<span class="swatch" style="background: rgb({c[0]},{c[1]},{c[2]})"></span>{esc(n)}'
                    for n, c in zip(class_names, palette))
    return f'<p class="legend">{items}<span class="swatch" style="background: #fff"></span>ignored</p>'


def write_page(path: str | os.PathLike, title: str, body: str) -> Path:
    """Write a complete HTML page (UTF-8, inline CSS)."""
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f"<style>{CSS}</style></head><body>\n<h1>{esc(title)}</h1>\n{body}\n</body></html>\n")
    return atomic_write_bytes(path, page.encode("utf-8"))
