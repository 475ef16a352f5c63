#!/usr/bin/env python3
"""Write the sample images of this folder from scikit-image's bundled photos (deterministic).

Originals (public domain / CC0, see LICENSE.md): scaled so the longer side is 400 px and saved
as JPEG quality 90. Altered copies carry the original's name before a double underscore:

* ``<name>__crop.jpg``   - a central crop (about half the area), not rescaled
* ``<name>__flip.jpg``   - mirrored left-right
* ``<name>__jpeg_q10.jpg`` - the same pixels saved at JPEG quality 10 (heavy compression)
* ``coffee__canvas.jpg`` - the photo shrunk to 240x160 and placed on a white 400x340 canvas at
  (80, 90), i.e. a "product shot" with wide white margins; :data:`CANVAS_BOX` is its content box

Usage: ``python images/make_samples.py [OUTPUT_DIR]`` (default: this folder). Needs numpy,
opencv-python-headless and scikit-image (the project's test extra). The output is the same
byte for byte for the same library versions.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import skimage.data

MAX_SIDE = 400
QUALITY = 90
#: skimage.data function names of the originals
ORIGINALS = ("chelsea", "coffee", "astronaut", "rocket", "hubble_deep_field", "retina")
#: (original, variant) pairs written next to the originals
VARIANTS = (
    ("chelsea", "crop"),
    ("chelsea", "flip"),
    ("chelsea", "jpeg_q10"),
    ("coffee", "canvas"),
    ("coffee", "flip"),
    ("astronaut", "crop"),
    ("astronaut", "jpeg_q10"),
    ("rocket", "crop"),
    ("rocket", "flip"),
)
CANVAS_SIZE = (400, 340)  # width, height
CANVAS_PRODUCT_SIZE = (240, 160)  # width, height of the photo on the canvas
CANVAS_OFFSET = (80, 90)  # x, y of its top-left corner
#: content box (x0, y0, x1, y1), half-open, of coffee__canvas.jpg
CANVAS_BOX = (
    CANVAS_OFFSET[0],
    CANVAS_OFFSET[1],
    CANVAS_OFFSET[0] + CANVAS_PRODUCT_SIZE[0],
    CANVAS_OFFSET[1] + CANVAS_PRODUCT_SIZE[1],
)


def original_bgr(name: str) -> np.ndarray:
    """The skimage photo as BGR uint8, longer side scaled down to :data:`MAX_SIDE`."""
    rgb = getattr(skimage.data, name)()
    if rgb.ndim == 2:
        rgb = np.stack([rgb] * 3, axis=-1)
    bgr = cv2.cvtColor(rgb[:, :, :3], cv2.COLOR_RGB2BGR)
    h, w = bgr.shape[:2]
    scale = MAX_SIDE / max(h, w)
    if scale < 1:
        bgr = cv2.resize(bgr, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    return bgr


def variant(img: np.ndarray, kind: str) -> tuple[np.ndarray, int]:
    """``(pixels, jpeg_quality)`` of an altered copy."""
    h, w = img.shape[:2]
    if kind == "crop":
        y0, y1, x0, x1 = round(h * 0.15), round(h * 0.85), round(w * 0.15), round(w * 0.85)
        return np.ascontiguousarray(img[y0:y1, x0:x1]), QUALITY
    if kind == "flip":
        return np.ascontiguousarray(img[:, ::-1]), QUALITY
    if kind == "jpeg_q10":
        return img, 10
    if kind == "canvas":
        canvas = np.full((CANVAS_SIZE[1], CANVAS_SIZE[0], 3), 255, dtype=np.uint8)
        product = cv2.resize(img, CANVAS_PRODUCT_SIZE, interpolation=cv2.INTER_AREA)
        x0, y0, x1, y1 = CANVAS_BOX
        canvas[y0:y1, x0:x1] = product
        return canvas, QUALITY
    raise ValueError(f"unknown variant {kind!r}")


def write_jpeg(path: Path, img: np.ndarray, quality: int) -> int:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_OPTIMIZE, 1])
    if not ok:
        raise RuntimeError(f"could not encode {path.name}")
    path.write_bytes(buf.tobytes())
    return len(buf)


def main(out_dir: Path) -> int:
    out_dir.mkdir(parents=True, exist_ok=True)
    total = 0
    originals = {name: original_bgr(name) for name in ORIGINALS}
    for name, img in originals.items():
        total += write_jpeg(out_dir / f"{name}.jpg", img, QUALITY)
    for name, kind in VARIANTS:
        pixels, quality = variant(originals[name], kind)
        total += write_jpeg(out_dir / f"{name}__{kind}.jpg", pixels, quality)
    print(f"wrote {len(ORIGINALS) + len(VARIANTS)} images, {total} bytes, to {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent))
