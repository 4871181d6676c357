"""Self-contained HTML report pages (change report, results report): tables, inlined figures, one style.

Text from data (run, class, chip and file names, notes) reaches these pages only escaped: :func:`html_table`
escapes every cell, index entry and header, :func:`png_img` its alt text, :func:`write_page` the title;
fragments a caller writes itself escape their values with :func:`html.escape`.
"""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from tiling.io import atomic_path

_STYLE = ("body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}"
          "table.t{border-collapse:collapse;margin:.5em 0 1.5em;font-size:13px}"
          "table.t td,table.t th{padding:3px 8px;border-bottom:1px solid #ddd;text-align:right}"
          "table.t th{background:#f4f4f4}img{max-width:100%}"
          "iframe{width:100%;height:85vh;min-height:600px;border:1px solid #ccc}.note{color:#555}.warn{color:#a40}")


def html_table(frame: pd.DataFrame, digits: int = 3, *, index: bool = True) -> str:
    """A DataFrame as an HTML table with thousands separators and ``digits`` decimals; all text escaped.

    Missing values (NaN) show as ``–``. With ``index=False`` the index is left out: give the table its row
    labels as a first column (``reset_index()``) so that their header sits on the header row, not on a row of
    its own as pandas draws a named index.
    """
    return frame.to_html(float_format=lambda v: f"{v:,.{digits}f}", na_rep="–", border=0, classes="t",
                         escape=True, index=index)


def relative_path(path: str | os.PathLike[str], start: str | os.PathLike[str]) -> str:
    """``path`` as a page shows it: relative to the page's directory ``start`` (a report names no directory of
    the machine that made it), with ``/`` separators; a URL or a path on another drive is kept whole."""
    text = os.fspath(path)
    if "://" in text:
        return text
    try:
        return Path(os.path.relpath(Path(text).resolve(), Path(start).resolve())).as_posix()
    except ValueError:  # another drive (Windows)
        return Path(text).name


def png_img(png: str | os.PathLike[str], alt: str) -> str:
    """An ``<img>`` holding a PNG file inline (a data URL), so the page needs no other file."""
    data = base64.b64encode(Path(png).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def write_page(path: str | os.PathLike[str], title: str, parts: Sequence[str]) -> Path:
    """Write one HTML page of ``parts`` (HTML fragments) with the report style, atomically."""
    document = ('<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
                f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
                + "\n".join(parts) + "</body></html>")
    with atomic_path(path) as temporary:
        temporary.write_text(document, encoding="utf-8")
    return Path(path)
