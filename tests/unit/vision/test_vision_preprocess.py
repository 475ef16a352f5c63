"""preprocess_batch and uniform-border trimming."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from visionjobs.vision.preprocess import (border_box, fit_image, normalize_batch, preprocess_batch, to_bgr,
                                         trim_uniform_border)

# coffee__canvas.jpg: the coffee photo at 240x160 pasted at (80, 90) on a white 400x340 canvas
# (see images/make_samples.py, CANVAS_BOX)
CANVAS_BOX = (80, 90, 320, 250)


def on_canvas(product: np.ndarray, canvas_hw=(340, 400), offset=(80, 90), colour=255) -> np.ndarray:
    canvas = np.full((*canvas_hw, 3), colour, np.uint8)
    h, w = product.shape[:2]
    canvas[offset[1] : offset[1] + h, offset[0] : offset[0] + w] = product
    return canvas


# ---------------------------------------------------------------- preprocess_batch
def test_shape_dtype_layout(sample_images) -> None:
    images = [sample_images["chelsea"], sample_images["coffee"], sample_images["astronaut"]]
    batch = preprocess_batch(images, 224, (127, 127, 127), (128, 128, 128))
    assert batch.shape == (3, 3, 224, 224)
    assert batch.dtype == np.float32 and batch.flags["C_CONTIGUOUS"]
    assert -1.0 <= batch.min() and batch.max() <= (255 - 127) / 128
    assert preprocess_batch([sample_images["chelsea"]], 96).shape == (1, 3, 96, 96)


def test_normalisation_values_and_rgb_order() -> None:
    img = np.empty((50, 70, 3), np.uint8)
    img[...] = (10, 20, 30)  # B, G, R
    batch = preprocess_batch([img], 32, (127, 127, 127), (128, 128, 128), trim=False)
    assert np.allclose(batch[0, 0], (30 - 127) / 128)  # channel 0 is red
    assert np.allclose(batch[0, 1], (20 - 127) / 128)
    assert np.allclose(batch[0, 2], (10 - 127) / 128)
    # per-channel mean/std are given in RGB order
    batch = preprocess_batch([img], 8, mean=(30, 10, 0), std=(1, 2, 5), trim=False)
    assert np.allclose(batch[0, 0], 0) and np.allclose(batch[0, 1], 5) and np.allclose(batch[0, 2], 2)
    batch = preprocess_batch([img], 8, mean=0.0, std=255.0, trim=False)
    assert np.allclose(batch[0, :, 0, 0], [30 / 255, 20 / 255, 10 / 255])


def test_resize_matches_cv2_inter_area(sample_images) -> None:
    img = sample_images["rocket"]
    expected = cv2.resize(img, (224, 224), interpolation=cv2.INTER_AREA)[..., ::-1].astype(np.float32)
    expected = ((expected - 127) / 128).transpose(2, 0, 1)
    batch = preprocess_batch([img], 224, trim=False)
    assert np.array_equal(batch[0], expected)


def test_fit_then_normalize_is_preprocess_batch(sample_images) -> None:
    """The two halves the embedding worker runs apart (fit on the loading threads, normalize on the
    inference thread) give exactly the one-call result."""
    images = [sample_images[n] for n in ("chelsea", "coffee__canvas", "rocket", "retina")]
    fitted = [fit_image(img, 224) for img in images]
    assert all(f.shape == (224, 224, 3) and f.dtype == np.uint8 for f in fitted)
    assert np.array_equal(normalize_batch(fitted, 224), preprocess_batch(images, 224))
    assert np.array_equal(normalize_batch(fitted, 224, (1, 2, 3), (4, 5, 6)),
                          preprocess_batch(images, 224, (1, 2, 3), (4, 5, 6)))
    with pytest.raises(ValueError, match="use fit_image"):
        normalize_batch([images[0]], 224)
    with pytest.raises(ValueError, match="image is empty"):
        fit_image(np.zeros((0, 5, 3), np.uint8), 224)
    with pytest.raises(ValueError, match="image 1: image is empty"):
        preprocess_batch([images[0], np.zeros((0, 5, 3), np.uint8)], 224)


def test_empty_batch_grey_and_bgra_inputs() -> None:
    assert preprocess_batch([], 224).shape == (0, 3, 224, 224)
    grey = np.full((20, 30), 100, np.uint8)
    bgra = np.full((20, 30, 4), 100, np.uint8)
    out = preprocess_batch([grey, bgra], 16, trim=False)
    assert np.allclose(out, (100 - 127) / 128)
    assert to_bgr(grey).shape == (20, 30, 3)


def test_invalid_inputs() -> None:
    img = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError):
        preprocess_batch([img], 0)
    with pytest.raises(ValueError):
        preprocess_batch([img], 8, std=(1, 0, 1))
    with pytest.raises(ValueError):
        preprocess_batch([img], 8, mean=(1, 2))
    with pytest.raises(ValueError):
        preprocess_batch([img.astype(np.float32)], 8)
    with pytest.raises(ValueError):
        preprocess_batch([np.zeros((0, 5, 3), np.uint8)], 8)


def test_trim_in_batch_equals_the_bare_product(sample_images) -> None:
    product = cv2.resize(sample_images["coffee"], (240, 160), interpolation=cv2.INTER_AREA)
    canvas = on_canvas(product)
    assert np.array_equal(preprocess_batch([canvas], 224), preprocess_batch([product], 224, trim=False))
    assert not np.array_equal(preprocess_batch([canvas], 224, trim=False), preprocess_batch([product], 224))


# ---------------------------------------------------------------- trimming
def test_white_canvas_trimmed_exactly(sample_images) -> None:
    product = cv2.resize(sample_images["coffee"], (240, 160), interpolation=cv2.INTER_AREA)
    canvas = on_canvas(product)
    assert border_box(canvas) == CANVAS_BOX
    trimmed = trim_uniform_border(canvas)
    assert np.array_equal(trimmed, product)


def test_jpeg_canvas_trimmed_to_product_box(sample_images) -> None:
    box = border_box(sample_images["coffee__canvas"])
    assert box is not None
    # JPEG ringing around the product's edges stays within one 8x8 block
    assert all(abs(a - b) <= 8 for a, b in zip(box, CANVAS_BOX, strict=True)), box
    trimmed = trim_uniform_border(sample_images["coffee__canvas"])
    assert trimmed.shape[0] <= 160 + 16 and trimmed.shape[1] <= 240 + 16


def test_black_border_and_grey_images() -> None:
    product = np.random.default_rng(0).integers(20, 236, (30, 40, 3), dtype=np.uint8)
    assert border_box(on_canvas(product, (100, 120), (10, 20), colour=0)) == (10, 20, 50, 50)
    grey = np.zeros((60, 60), np.uint8)
    grey[10:20, 30:50] = 200
    assert trim_uniform_border(grey).shape == (10, 20)


def test_product_touching_one_edge() -> None:
    product = np.full((40, 50, 3), (30, 90, 160), np.uint8)
    canvas = np.full((100, 100, 3), 255, np.uint8)
    canvas[60:100, 20:70] = product  # touches the bottom edge: bottom corners are not white
    assert border_box(canvas) == (20, 60, 70, 100)


@pytest.mark.parametrize("colour", [0, 128, 255])
def test_uniform_image_is_not_emptied(colour: int) -> None:
    img = np.full((50, 80, 3), colour, np.uint8)
    assert border_box(img) is None
    assert trim_uniform_border(img) is img
    noisy = img.astype(np.int16) + np.random.default_rng(0).integers(-5, 6, img.shape)
    noisy = np.clip(noisy, 0, 255).astype(np.uint8)
    assert trim_uniform_border(noisy).shape == img.shape  # noise within tolerance is still border


def test_tiny_and_degenerate_images() -> None:
    for shape in [(1, 1, 3), (1, 7, 3), (2, 2), (3, 3, 3)]:
        img = np.zeros(shape, np.uint8)
        assert trim_uniform_border(img).size == img.size


def test_photo_without_border_is_unchanged(sample_images) -> None:
    for name in ("chelsea", "coffee", "rocket", "astronaut"):
        assert trim_uniform_border(sample_images[name]) is sample_images[name]


def test_speck_on_empty_canvas_is_ignored() -> None:
    canvas = np.full((500, 500, 3), 255, np.uint8)
    canvas[200:203, 300:303] = 0  # 3 px: below min_fraction (2% of 500 = 10 px)
    assert border_box(canvas) is None
    assert border_box(canvas, min_fraction=0.0) == (300, 200, 303, 203)


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(1, 40),
    w=st.integers(1, 40),
    seed=st.integers(0, 2**16),
    flat=st.booleans(),
)
def test_trim_never_returns_empty(h: int, w: int, seed: int, flat: bool) -> None:
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 255, np.uint8)
    if not flat:
        y0, x0 = rng.integers(0, h), rng.integers(0, w)
        img[y0 : y0 + rng.integers(1, h + 1), x0 : x0 + rng.integers(1, w + 1)] = rng.integers(0, 256, 3)
    out = trim_uniform_border(img)
    assert out.shape[0] >= 1 and out.shape[1] >= 1 and out.ndim == 3
    box = border_box(img)
    if box is not None:
        x0, y0, x1, y1 = box
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
