"""Sample grids: rows of PIL images pasted into one picture (logged to MLflow by the T2I stages).

Example:
    >>> from PIL import Image
    >>> tile = Image.new("RGB", (8, 8))
    >>> image_grid([[tile, tile], [tile]]).size
    (18, 18)
"""

from __future__ import annotations

from PIL import Image

GAP = 2


def image_grid(rows: list[list[Image.Image]], gap: int = GAP) -> Image.Image:
    """Paste ``rows`` of equally sized images onto a white canvas, ``gap`` pixels apart."""
    tiles = [image for row in rows for image in row]
    if not tiles:
        raise ValueError("image_grid needs at least one image")
    width, height = tiles[0].size
    columns = max(len(row) for row in rows)
    canvas = Image.new("RGB", (columns * (width + gap) - gap, len(rows) * (height + gap) - gap), "white")
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            canvas.paste(image.convert("RGB"), (c * (width + gap), r * (height + gap)))
    return canvas
