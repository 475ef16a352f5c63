"""decode_image / probe_image: format allowlist, header checks, decompression bombs."""

from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest

from visionjobs.settings import REPO_DIR
from visionjobs.vision.errors import ImageDecodeError, ImageError, ImageLoadError
from visionjobs.vision.loader import decode_image, probe_image

CHELSEA = (REPO_DIR / "images" / "chelsea.jpg").read_bytes()


def encode(ext: str, img: np.ndarray, params: list[int] | None = None) -> bytes:
    ok, buf = cv2.imencode(ext, img, params or [])
    assert ok
    return buf.tobytes()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def reason_of(data: bytes, **kwargs) -> str:
    with pytest.raises(ImageDecodeError) as exc:
        decode_image(data, **kwargs)
    assert isinstance(exc.value, ImageError) and not isinstance(exc.value, ImageLoadError)
    return exc.value.reason


def test_decodes_jpeg_to_bgr_uint8() -> None:
    img = decode_image(CHELSEA)
    assert img.dtype == np.uint8 and img.shape == (266, 400, 3) and img.flags["C_CONTIGUOUS"]
    header = probe_image(CHELSEA)
    assert (header.format, header.width, header.height) == ("jpeg", 400, 266)


def test_channel_order_is_bgr() -> None:
    red_bgr = np.zeros((8, 8, 3), np.uint8)
    red_bgr[..., 2] = 255
    out = decode_image(encode(".png", red_bgr))
    assert out[0, 0].tolist() == [0, 0, 255]


@pytest.mark.parametrize("ext", [".png", ".webp", ".bmp", ".jpg"])
def test_supported_formats_and_header_sizes(ext: str) -> None:
    img = np.random.default_rng(1).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    data = encode(ext, img)
    header = probe_image(data)
    assert (header.width, header.height) == (53, 37)
    assert decode_image(data).shape == (37, 53, 3)


def test_lossless_webp_and_gif_headers() -> None:
    img = np.random.default_rng(2).integers(0, 256, (21, 34, 3), dtype=np.uint8)
    lossless = encode(".webp", img, [cv2.IMWRITE_WEBP_QUALITY, 101])
    assert (probe_image(lossless).width, probe_image(lossless).height) == (34, 21)
    gif = b"GIF89a" + struct.pack("<HH", 640, 480) + b"\x00" * 8
    assert (probe_image(gif).format, probe_image(gif).width, probe_image(gif).height) == ("gif", 640, 480)


def test_grey_16bit_and_alpha_images_become_bgr_uint8() -> None:
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8)
    out = decode_image(encode(".png", grey))
    assert out.shape == (8, 8, 3) and (out[..., 0] == grey).all()

    deep = np.full((4, 4, 3), 0xABCD, np.uint16)
    out = decode_image(encode(".png", deep))
    assert out.dtype == np.uint8 and (out == 0xAB).all()

    bgra = np.zeros((4, 4, 4), np.uint8)
    bgra[..., 0] = 200  # blue where opaque
    bgra[:2, :, 3] = 255  # top half opaque, bottom half fully transparent
    out = decode_image(encode(".png", bgra))
    assert out.shape == (4, 4, 3)
    assert out[0, 0].tolist() == [200, 0, 0]
    assert out[3, 0].tolist() == [255, 255, 255]  # transparency flattened onto white


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", "empty"),
        (b"this is not an image at all", "unsupported_format"),
        (bytes(range(256)) * 4, "unsupported_format"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "unsupported_format"),
        (b"II*\x00" + b"\x00" * 100, "unsupported_format"),  # TIFF is not on the allowlist
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 4, "bad_header"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 7, "bad_header"),  # no frame header
        (b"GIF89a\x00\x00\x10\x00", "bad_header"),  # zero width
    ],
)
def test_garbage_and_broken_headers(data: bytes, expected: str) -> None:
    assert reason_of(data) == expected


def test_truncated_and_corrupt_bodies() -> None:
    assert reason_of(CHELSEA[:600]) in ("decode_failed", "bad_header")
    png = encode(".png", np.zeros((16, 16, 3), np.uint8))
    broken = png[:33] + b"\x00" * (len(png) - 33)  # valid IHDR, garbage after it
    assert reason_of(broken) == "decode_failed"


def test_png_bomb_refused_from_header() -> None:
    # 100000 x 100000 declared in IHDR, a few bytes of data: never handed to the decoder
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    bomb = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\0" * 1000))
    assert reason_of(bomb) == "too_many_pixels"


def test_jpeg_bomb_refused_from_header() -> None:
    data = bytearray(encode(".jpg", np.zeros((16, 16, 3), np.uint8)))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 60_000, 60_000)  # height, width
    assert probe_image(bytes(data)).pixels == 3_600_000_000
    assert reason_of(bytes(data)) == "too_many_pixels"


def test_webp_and_bmp_bombs_refused_from_header() -> None:
    vp8x = b"RIFF" + struct.pack("<I", 30) + b"WEBPVP8X" + struct.pack("<I", 10) + b"\x00" * 4
    vp8x += (16383).to_bytes(3, "little") * 2
    assert reason_of(vp8x) == "too_many_pixels"
    bmp = b"BM" + b"\x00" * 12 + struct.pack("<Iii", 40, 30_000, -30_000) + b"\x00" * 30
    assert probe_image(bmp).height == 30_000
    assert reason_of(bmp) == "too_many_pixels"


def test_max_pixels_is_inclusive() -> None:
    data = encode(".png", np.zeros((10, 10, 3), np.uint8))
    assert decode_image(data, max_pixels=100).shape == (10, 10, 3)
    assert reason_of(data, max_pixels=99) == "too_many_pixels"
    with pytest.raises(ValueError):
        decode_image(data, max_pixels=0)
