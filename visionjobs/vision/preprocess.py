"""Image preprocessing for the embedding model: border trimming and batch tensor building.

Images are OpenCV-style ``uint8`` arrays in BGR order, ``(H, W, 3)`` (``(H, W)`` grey and
``(H, W, 4)`` BGRA are accepted too). The model wants RGB, a fixed square size, ``(x - mean) / std``
per channel, NCHW ``float32``.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

__all__ = ["trim_uniform_border", "border_box", "to_bgr", "fit_image", "normalize_batch", "preprocess_batch"]


def _corner_colours(img: np.ndarray) -> np.ndarray:
    """Median colour of a small patch at each corner, shape ``(4, C)`` as ``int16``."""
    h, w = img.shape[:2]
    k = max(1, min(h, w) // 64)  # a few pixels: robust to JPEG noise, small enough to stay in the border
    k = min(k, 4)
    patches = (img[:k, :k], img[:k, w - k :], img[h - k :, :k], img[h - k :, w - k :])
    return np.stack([np.median(p.reshape(-1, img.shape[2]), axis=0) for p in patches]).astype(np.int16)


def border_box(
    img: np.ndarray, tolerance: int = 8, min_fraction: float = 0.02
) -> tuple[int, int, int, int] | None:
    """Content box ``(x0, y0, x1, y1)`` (half-open) inside a uniform border, or ``None``.

    The border colour is taken from the corners: every colour shared (within ``tolerance`` on
    each channel) by at least two corners is a candidate - so a product touching one edge of a
    white canvas is still trimmed on the other three sides - and the candidate that leaves the
    smallest content box wins. A pixel is content when any channel differs from the border
    colour by more than ``tolerance``.

    Returns ``None`` when there is nothing to trim: no border colour shared by two corners, no
    content at all (a uniform image), a box covering the whole image, or a box thinner than
    ``min_fraction`` of the image height or width (specks of noise on an empty canvas).
    """
    if img.ndim not in (2, 3) or img.shape[0] < 3 or img.shape[1] < 3:
        return None
    arr = np.ascontiguousarray(img if img.ndim == 3 else img[:, :, None])
    if arr.dtype != np.uint8 or arr.shape[2] > 4:
        raise ValueError(f"expected a uint8 image with at most 4 channels, got {arr.dtype} {img.shape}")
    h, w = arr.shape[:2]
    corners = _corner_colours(arr)
    best: tuple[int, int, int, int] | None = None
    best_area = h * w
    tried: list[np.ndarray] = []
    for colour in corners:
        if any(np.abs(colour - t).max() <= tolerance for t in tried):
            continue
        tried.append(colour)
        if int((np.abs(corners - colour).max(axis=1) <= tolerance).sum()) < 2:
            continue
        # border mask (255 where every channel is within tolerance of the border colour), then
        # the bounding rectangle of everything else: both single SIMD passes in OpenCV
        lower = np.clip(colour - tolerance, 0, 255).astype(np.float64)
        upper = np.clip(colour + tolerance, 0, 255).astype(np.float64)
        content = cv2.bitwise_not(cv2.inRange(arr, lower, upper))
        x0, y0, bw, bh = cv2.boundingRect(content)
        if bw == 0 or bh == 0:
            continue  # uniform image: nothing but border
        if bw < max(1, min_fraction * w) or bh < max(1, min_fraction * h):
            continue
        if bw * bh < best_area:
            best, best_area = (x0, y0, x0 + bw, y0 + bh), bw * bh
    return best


def trim_uniform_border(img: np.ndarray, tolerance: int = 8, min_fraction: float = 0.02) -> np.ndarray:
    """Crop away a uniform border (e.g. the white canvas around a product photo).

    See :func:`border_box` for how the border is found. Never returns an empty image: when
    there is nothing sensible to trim the input itself is returned (not a copy). The result is a
    view into ``img``.

    Args:
        img: ``(H, W)`` or ``(H, W, C)`` ``uint8`` image.
        tolerance: largest per-channel difference from the border colour still counted as border
            (absorbs JPEG noise).
        min_fraction: a content box narrower or shorter than this fraction of the image is
            treated as noise and the image is left untouched.
    """
    box = border_box(img, tolerance=tolerance, min_fraction=min_fraction)
    if box is None:
        return img
    x0, y0, x1, y1 = box
    return img[y0:y1, x0:x1]


def to_bgr(img: np.ndarray) -> np.ndarray:
    """``(H, W)`` grey, ``(H, W, 1)``, ``(H, W, 3)`` BGR or ``(H, W, 4)`` BGRA -> ``(H, W, 3)`` BGR uint8."""
    if img.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {img.dtype}")
    if img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 1):
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.ndim == 3 and img.shape[2] == 3:
        return img
    if img.ndim == 3 and img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    raise ValueError(f"unsupported image shape {img.shape}")


def _per_channel(value: float | Sequence[float], name: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float32).reshape(-1)
    if arr.size == 1:
        arr = np.repeat(arr, 3)
    if arr.size != 3:
        raise ValueError(f"{name} must be a scalar or 3 values, got {value!r}")
    return arr.reshape(1, 3, 1, 1)


def fit_image(img: np.ndarray, size: int, trim: bool = True, *, trim_tolerance: int = 8) -> np.ndarray:
    """The per-image half of :func:`preprocess_batch`: BGR ``uint8 (size, size, 3)``.

    Optional :func:`trim_uniform_border`, then resize to ``size x size`` with ``cv2.INTER_AREA``
    (aspect ratio is not kept, as in the model's training pipeline). This is the expensive part
    for large images; it is independent per image, so workers run it on their loading threads.
    """
    if size <= 0:
        raise ValueError("size must be positive")
    bgr = to_bgr(np.asarray(img))
    if bgr.shape[0] == 0 or bgr.shape[1] == 0:
        raise ValueError("image is empty")
    if trim:
        bgr = trim_uniform_border(bgr, tolerance=trim_tolerance)
    if bgr.shape[0] == size and bgr.shape[1] == size:
        return np.ascontiguousarray(bgr)
    return cv2.resize(bgr, (size, size), interpolation=cv2.INTER_AREA)


def normalize_batch(
    fitted: Sequence[np.ndarray],
    size: int,
    mean: float | Sequence[float] = (127.0, 127.0, 127.0),
    std: float | Sequence[float] = (128.0, 128.0, 128.0),
) -> np.ndarray:
    """The batch half of :func:`preprocess_batch`, over images made by :func:`fit_image`: BGR -> RGB,
    ``(x - mean) / std`` with ``mean`` / ``std`` given in RGB order, HWC -> CHW.

    Returns:
        ``float32`` C-contiguous array of shape ``(len(fitted), 3, size, size)``.
    """
    mean_arr = _per_channel(mean, "mean")
    std_arr = _per_channel(std, "std")
    if np.any(std_arr == 0):
        raise ValueError("std must not contain zeros")
    batch = np.empty((len(fitted), size, size, 3), dtype=np.uint8)
    for i, img in enumerate(fitted):
        if img.shape != (size, size, 3):
            raise ValueError(f"image {i} has shape {img.shape}, not {(size, size, 3)} (use fit_image)")
        batch[i] = img
    # BGR -> RGB, NHWC -> NCHW and uint8 -> float32 in one pass per channel, then the scale
    out = np.empty((len(fitted), 3, size, size), dtype=np.float32)
    for c in range(3):  # output channel c (R, G, B) is input channel 2 - c (B, G, R)
        np.subtract(batch[..., 2 - c], mean_arr[0, c, 0, 0], out=out[:, c], dtype=np.float32)
    out /= std_arr
    return out


def preprocess_batch(
    images: Sequence[np.ndarray],
    size: int,
    mean: float | Sequence[float] = (127.0, 127.0, 127.0),
    std: float | Sequence[float] = (128.0, 128.0, 128.0),
    trim: bool = True,
    *,
    trim_tolerance: int = 8,
) -> np.ndarray:
    """Turn BGR uint8 images into the model's input tensor: :func:`fit_image` per image, then
    :func:`normalize_batch` for the whole batch at once.

    Returns:
        ``float32`` C-contiguous array of shape ``(len(images), 3, size, size)``.
    """
    if size <= 0:
        raise ValueError("size must be positive")
    _per_channel(mean, "mean")
    if np.any(_per_channel(std, "std") == 0):
        raise ValueError("std must not contain zeros")
    fitted = []
    for i, img in enumerate(images):
        try:
            fitted.append(fit_image(img, size, trim, trim_tolerance=trim_tolerance))
        except ValueError as exc:
            raise ValueError(f"image {i}: {exc}") from exc
    return normalize_batch(fitted, size, mean, std)
