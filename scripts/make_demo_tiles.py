"""Rebuild the demo's packaged tile set, ``src/napari_wsi_mil/data/tiles/``.

From the labelled CC BY 4.0 tiles in ``../shared/data/tiles-labelled`` (CRC-VAL-HE-7K and
Kather 2016): every tile that :func:`napari_wsi_mil.slide.mosaic.tile_class` calls tumour or
normal (background skipped), re-encoded as JPEG at quality 90 under its own class-bearing
name, except exact re-encodings of another tile (the same image as ``.png`` beside
``_<n>.jpg``), which would put one tile into both the train and the test pool.

    python scripts/make_demo_tiles.py [SOURCE_DIR]

``ATTRIBUTION.md`` beside the tiles is written by hand; keep it when rebuilding.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

from napari_wsi_mil.slide.mosaic import tile_class

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "src" / "napari_wsi_mil" / "data" / "tiles"
SOURCE = ROOT.parent.parent / "shared" / "data" / "tiles-labelled"
QUALITY = 90


def main(source: Path) -> None:
    kept: dict[Path, np.ndarray] = {}
    for path in sorted(source.rglob("*")):
        if path.suffix.lower() not in {".png", ".jpg"} or tile_class(path) is None:
            continue
        image = Image.open(path).convert("RGB")
        thumb = np.asarray(image.resize((32, 32)), float)
        twin = next((p for p, t in kept.items() if np.abs(t - thumb).mean() < 2), None)
        if twin is not None:
            print(f"skipped {path.name}: the same tile as {twin.name}")
            continue
        kept[path] = thumb
        image.save(OUT / f"{path.stem}.jpg", quality=QUALITY)
    total = sum(p.stat().st_size for p in OUT.glob("*.jpg"))
    print(f"{len(kept)} tiles, {total / 1e6:.1f} MB in {OUT}")


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else SOURCE)
