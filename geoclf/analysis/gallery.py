"""The misclassified-chip gallery of a results report: chip images read through the chip index, drawn with Pillow.

Pillow, not matplotlib: a matplotlib figure per chip costs ~0.3 s (layout of axes that are not even shown), a
Pillow card a millisecond, and a report may draw hundreds.
"""

from __future__ import annotations

import math
import os
import re
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import font_manager
from PIL import Image, ImageDraw, ImageFont

from geoclf.chips import read_batch
from geoclf.features import load_chip_table
from tiling.errors import InputError
from tiling.io import ChipReader, atomic_path

PathLike = str | os.PathLike[str]

#: Subdirectory of the report holding one PNG per gallery chip.
GALLERY_DIR = "gallery"

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def write_gallery(wrong: pd.DataFrame, chips: PathLike | None, out_dir: PathLike, *, title: str = "",
                  size: int = 224) -> tuple[Path | None, list[Path]]:
    """Draw misclassified chips: one PNG each in ``out_dir/gallery/`` and all of them in ``gallery.png``.

    Each chip is read from its source raster through the chip index (RGB, ``size`` pixels) and titled
    ``true → predicted`` with the predicted class's probability. PNGs left in ``gallery/`` by an earlier
    report are removed, so the folder holds exactly this gallery.

    Args:
        wrong: the chips to draw, in order (:func:`misclassified`, possibly cut to the first N).
        chips: the chip index (or PNG folder) holding them (may be ``None`` when ``wrong`` is empty).
        out_dir: report directory.
        title: heading of ``gallery.png``.
        size: side of each chip image in pixels.

    Returns:
        ``gallery.png`` (``None`` when there is nothing to draw) and the individual PNGs, in ``wrong`` order.

    Raises:
        InputError: a chip is not in the chip index, or its raster cannot be read.
    """
    out = Path(out_dir)
    folder = out / GALLERY_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.png"):
        stale.unlink()
    if wrong.empty:
        (out / "gallery.png").unlink(missing_ok=True)
        return None, []
    if chips is None or not Path(chips).exists():
        raise InputError("no such chip index to read the gallery chips from (pass --chips, or --gallery 0)",
                         chips)
    table, _ = load_chip_table(chips)
    table = table.drop_duplicates("chip_id").set_index("chip_id", drop=False)
    missing = sorted(set(wrong["chip_id"]) - set(table.index))
    if missing:
        raise InputError(f"chip {missing[0]!r} (and {len(missing) - 1} more) is not in the chip index; is this "
                         "the index the run was trained on?", chips)
    with ChipReader((1, 2, 3), size) as reader:
        images = read_batch(table.loc[wrong["chip_id"].to_list()], reader)
    font, small = _font(13), _font(10)
    cards, files = [], []
    for row, image in zip(wrong.itertuples(), images, strict=True):
        card = _chip_card(image, str(row.label), str(row.pred), float(row.prob), font)
        cards.append(card)
        name = _UNSAFE.sub("_", f"{row.rank:03d}_{row.label}_as_{row.pred}_{row.chip_id}") + ".png"
        files.append(folder / name)
        _save_png(_with_text(card, [], [str(row.chip_id)], small), files[-1])
    grid = out / "gallery.png"
    _save_png(_mosaic(cards, title, font), grid)
    return grid, files


_PAD = 6
_MIN_SIDE = 192  # small chips (e.g. 32 px) are enlarged, nearest neighbour, to a readable size


def _font(size: int) -> Any:
    """DejaVu Sans (shipped with matplotlib; it has the arrow), else Pillow's default font."""
    try:
        return ImageFont.truetype(font_manager.findfont("DejaVu Sans", fallback_to_default=True), size)
    except OSError:
        return ImageFont.load_default(size)


def _chip_card(image: np.ndarray, label: str, pred: str, prob: float, font: Any) -> Any:
    """One chip (``(3, H, W)`` uint8), enlarged if small, under its caption ``true → predicted``, ``p``."""
    picture = Image.fromarray(np.ascontiguousarray(np.moveaxis(image, 0, -1)))
    scale = max(1, math.ceil(_MIN_SIDE / max(picture.width, 1)))
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    title = f"{label} → {pred}"
    lines = [title] if font.getlength(title) <= picture.width else [f"{label} →", pred]
    return _with_text(picture, [*lines, f"p = {prob:.2f}"], [], font)


def _with_text(picture: Any, above: Sequence[str], below: Sequence[str], font: Any) -> Any:
    """``picture`` on a white card with centred lines of text above and below it."""
    line = round(font.size * 1.3)
    width = max([picture.width, *(round(font.getlength(t)) for t in (*above, *below))]) + 2 * _PAD
    height = picture.height + line * (len(above) + len(below)) + 2 * _PAD
    card = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(card)
    y = _PAD
    for text in above:
        draw.text((width / 2, y), text, fill="black", font=font, anchor="mt")
        y += line
    card.paste(picture, ((width - picture.width) // 2, y))
    y += picture.height
    for text in below:
        draw.text((width / 2, y + 2), text, fill="#555", font=font, anchor="mt")
        y += line
    return card


def _mosaic(cards: Sequence[Any], heading: str, font: Any, columns: int = 6) -> Any:
    """Cards on a grid, row by row, under a heading wrapped to the grid's width."""
    ncols = max(1, min(columns, len(cards)))
    nrows = math.ceil(len(cards) / ncols)
    cell_w, cell_h = max(c.width for c in cards), max(c.height for c in cards)
    width = ncols * cell_w + (ncols + 1) * _PAD
    chars = max(20, int(width / (0.6 * font.size)))
    lines = textwrap.wrap(heading, width=chars) if heading else []
    line = round(font.size * 1.4)
    top = _PAD + line * len(lines)
    canvas = Image.new("RGB", (width, top + nrows * (cell_h + _PAD) + _PAD), "white")
    draw = ImageDraw.Draw(canvas)
    for i, text in enumerate(lines):
        draw.text((width / 2, _PAD + i * line), text, fill="black", font=font, anchor="mt")
    for k, card in enumerate(cards):
        row, col = divmod(k, ncols)
        canvas.paste(card, (_PAD + col * (cell_w + _PAD) + (cell_w - card.width) // 2,
                            top + _PAD + row * (cell_h + _PAD)))
    return canvas


def _save_png(image: Any, path: Path) -> Path:
    with atomic_path(path) as temporary:
        image.save(temporary, format="PNG")
    return path
