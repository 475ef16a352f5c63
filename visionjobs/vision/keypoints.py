"""Local keypoints and descriptors (ORB or SIFT) with OpenCV.

Thread safety: an OpenCV feature detector object is **not** safe to call from several threads at
once. A :class:`KeypointExtractor` creates its detector once and reuses it, so give each worker
thread its own extractor (e.g. through ``threading.local``), or guard a shared one with a lock.
:func:`match_score` builds its own matcher per call and is safe anywhere.

Near-duplicates: :func:`match_score` compares two :class:`KeypointSet` (mutual ratio-test matches,
verified by one RANSAC similarity transform). ORB/SIFT descriptors are not mirror-invariant, so
:meth:`KeypointExtractor.near_duplicate_score` also tries the mirrored image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import cv2
import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from visionjobs.settings import Settings

__all__ = ["KeypointSet", "KeypointExtractor", "match_score", "Keypoint"]

#: ``(x, y, size, angle, response)``: position in pixels of the input image, diameter of the
#: meaningful neighbourhood, orientation in degrees (-1 if none), detector response (strength).
Keypoint = tuple[float, float, float, float, float]

_DTYPES = {"uint8": np.uint8, "float32": np.float32}


@dataclass(frozen=True)
class KeypointSet:
    """Keypoints of one image and their descriptors, in a serialisable form.

    ``descriptors`` is the C-order bytes of an ``(n, descriptor_size)`` array of
    ``descriptor_dtype`` (``uint8`` for ORB: 32 bytes per keypoint; ``float32`` for SIFT: 128
    values, 512 bytes per keypoint). Row ``i`` describes ``keypoints[i]``; keypoints are sorted
    by decreasing response.
    """

    keypoints: list[Keypoint]
    descriptors: bytes
    descriptor_size: int
    descriptor_dtype: str
    detector: str = "orb"
    #: ``(width, height)`` of the image the keypoints were found on
    image_size: tuple[int, int] = field(default=(0, 0))

    def __len__(self) -> int:
        return len(self.keypoints)

    @property
    def descriptor_bytes(self) -> int:
        """Bytes per descriptor row."""
        return self.descriptor_size * np.dtype(self.descriptor_dtype).itemsize

    def descriptor_array(self) -> np.ndarray:
        """Descriptors as an ``(n, descriptor_size)`` array (read-only view of the bytes)."""
        dtype = np.dtype(self.descriptor_dtype)
        return np.frombuffer(self.descriptors, dtype=dtype).reshape(len(self.keypoints), self.descriptor_size)


class KeypointExtractor:
    """Finds up to ``max_keypoints`` keypoints on the grey version of an image.

    Args:
        detector: ``"orb"`` (binary 32-byte descriptors, fast) or ``"sift"`` (128 float32).
        max_keypoints: hard cap on the keypoints returned (strongest responses kept).
        max_side: images whose longer side exceeds this are downscaled before detection (for
            bounded time on huge photos); keypoint coordinates and sizes are reported in the
            original image's pixels. ``None`` disables it.

    Not thread-safe: see the module docstring.
    """

    def __init__(
        self,
        detector: Literal["orb", "sift"] = "orb",
        max_keypoints: int = 500,
        *,
        max_side: int | None = 1600,
    ) -> None:
        detector = detector.lower()  # type: ignore[assignment]
        if max_keypoints < 1:
            raise ValueError("max_keypoints must be >= 1")
        if max_side is not None and max_side < 32:
            raise ValueError("max_side must be >= 32 or None")
        if detector == "orb":
            self._detector = cv2.ORB_create(nfeatures=max_keypoints)
            self.descriptor_dtype = "uint8"
        elif detector == "sift":
            self._detector = cv2.SIFT_create(nfeatures=max_keypoints)
            self.descriptor_dtype = "float32"
        else:
            raise ValueError(f"unknown detector {detector!r}; expected 'orb' or 'sift'")
        self.detector = detector
        self.max_keypoints = int(max_keypoints)
        self.max_side = max_side
        self.descriptor_size = int(self._detector.descriptorSize())

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> KeypointExtractor:
        """Build from :class:`visionjobs.settings.Settings` (``detector``, ``max_keypoints``)."""
        if settings is None:
            from visionjobs.settings import get_settings

            settings = get_settings()
        return cls(settings.detector, settings.max_keypoints)

    def __repr__(self) -> str:
        return f"KeypointExtractor(detector={self.detector!r}, max_keypoints={self.max_keypoints})"

    def _grey(self, img: np.ndarray) -> tuple[np.ndarray, float, float]:
        if img.dtype != np.uint8:
            raise ValueError(f"expected a uint8 image, got {img.dtype}")
        if img.ndim == 2:
            grey = img
        elif img.ndim == 3 and img.shape[2] == 1:
            grey = img[:, :, 0]
        elif img.ndim == 3 and img.shape[2] == 3:
            grey = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        elif img.ndim == 3 and img.shape[2] == 4:
            grey = cv2.cvtColor(img, cv2.COLOR_BGRA2GRAY)
        else:
            raise ValueError(f"unsupported image shape {img.shape}")
        sx = sy = 1.0
        height, width = grey.shape[:2]
        longest = max(height, width)
        if self.max_side is not None and longest > self.max_side:
            factor = self.max_side / longest
            new_w, new_h = max(1, round(width * factor)), max(1, round(height * factor))
            grey = cv2.resize(grey, (new_w, new_h), interpolation=cv2.INTER_AREA)
            sx, sy = width / new_w, height / new_h
        return np.ascontiguousarray(grey), sx, sy

    def extract(self, img: np.ndarray, *, mirror: bool = False) -> KeypointSet:
        """Keypoints and descriptors of a BGR (or grey) ``uint8`` image.

        An image without any keypoint (e.g. a flat colour) gives an empty set, not an error.
        With ``mirror`` the image is flipped left-right first and the keypoints are those of the
        flipped image (coordinates in its frame): use it to recognise mirrored copies, since the
        descriptors themselves are not mirror-invariant.
        """
        height, width = img.shape[:2]
        empty = KeypointSet([], b"", self.descriptor_size, self.descriptor_dtype, self.detector, (width, height))
        if height == 0 or width == 0:
            return empty
        grey, sx, sy = self._grey(img)
        if mirror:
            grey = np.ascontiguousarray(grey[:, ::-1])
        kps, desc = self._detector.detectAndCompute(grey, None)
        if desc is None or len(kps) == 0:
            return empty
        order = sorted(range(len(kps)), key=lambda i: -kps[i].response)[: self.max_keypoints]
        desc = np.ascontiguousarray(desc[order], dtype=_DTYPES[self.descriptor_dtype])
        keypoints: list[Keypoint] = [
            (
                float(kps[i].pt[0] * sx),
                float(kps[i].pt[1] * sy),
                float(kps[i].size * (sx + sy) / 2),
                float(kps[i].angle),
                float(kps[i].response),
            )
            for i in order
        ]
        return KeypointSet(keypoints, desc.tobytes(), self.descriptor_size, self.descriptor_dtype,
                           self.detector, (width, height))

    def near_duplicate_score(self, img_a: np.ndarray, img_b: np.ndarray, *, mirror: bool = True) -> float:
        """:func:`match_score` of two images; with ``mirror`` also against ``img_b`` flipped
        left-right, keeping the better of the two (so mirrored copies count as duplicates)."""
        a = self.extract(img_a)
        score = match_score(a, self.extract(img_b))
        if mirror and score < 1.0:
            score = max(score, match_score(a, self.extract(img_b, mirror=True)))
        return score


def _ratio_matches(
    matcher: cv2.DescriptorMatcher, query: np.ndarray, train: np.ndarray, ratio: float
) -> dict[int, int]:
    """query index -> train index for matches passing Lowe's ratio test."""
    if len(train) < 2:  # the ratio test needs two candidates
        return {}
    out: dict[int, int] = {}
    for pair in matcher.knnMatch(query, train, k=2):
        if len(pair) == 2 and pair[0].distance < ratio * pair[1].distance:
            out[pair[0].queryIdx] = pair[0].trainIdx
    return out


def match_score(
    a: KeypointSet,
    b: KeypointSet,
    ratio: float = 0.75,
    *,
    verify: bool = True,
    min_matches: int = 6,
) -> float:
    """Near-duplicate score of two keypoint sets, from 0 (unrelated) to 1 (same image).

    Descriptors are matched brute force (Hamming distance for binary ORB descriptors, L2 for
    SIFT), k=2 in both directions; a match counts when it passes Lowe's ratio test in both
    directions and is mutual. With ``verify`` (the default) the matched positions must then
    agree on one similarity transform (rotation, uniform scale, translation; RANSAC), which
    removes chance matches between unrelated images. Fewer than ``min_matches`` surviving
    matches score 0. The score is the surviving matches divided by the smaller keypoint count.

    Crops, rescales, re-compression and mild edits keep a clearly positive score; unrelated
    images score 0 or close to it. ORB and SIFT descriptors are **not mirror-invariant**: a
    left-right flipped copy only matches keypoints extracted with ``mirror=True`` (see
    :meth:`KeypointExtractor.near_duplicate_score`).
    """
    if not 0 < ratio <= 1:
        raise ValueError("ratio must be in (0, 1]")
    if a.descriptor_dtype != b.descriptor_dtype or a.descriptor_size != b.descriptor_size:
        raise ValueError(
            f"descriptors differ: {a.descriptor_dtype}x{a.descriptor_size} "
            f"vs {b.descriptor_dtype}x{b.descriptor_size}"
        )
    if len(a) == 0 or len(b) == 0:
        return 0.0
    # canonical order, so that match_score(a, b) == match_score(b, a) exactly
    if (len(a), a.descriptors) > (len(b), b.descriptors):
        a, b = b, a
    norm = cv2.NORM_HAMMING if a.descriptor_dtype == "uint8" else cv2.NORM_L2
    matcher = cv2.BFMatcher(norm, crossCheck=False)
    da, db = a.descriptor_array(), b.descriptor_array()
    forward = _ratio_matches(matcher, da, db, ratio)
    backward = _ratio_matches(matcher, db, da, ratio)
    mutual = [(i, j) for i, j in forward.items() if backward.get(j) == i]
    denominator = min(len(a), len(b))
    if len(mutual) < max(min_matches, 2 if verify else 1):
        return 0.0
    good = len(mutual)
    if verify:
        src = np.array([a.keypoints[i][:2] for i, _ in mutual], dtype=np.float32)
        dst = np.array([b.keypoints[j][:2] for _, j in mutual], dtype=np.float32)
        threshold = max(3.0, 0.01 * max(b.image_size))  # pixels; scales with the image
        _, inliers = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=threshold)
        good = int(inliers.sum()) if inliers is not None else 0
        if good < min_matches:
            return 0.0
    return min(1.0, good / denominator)
