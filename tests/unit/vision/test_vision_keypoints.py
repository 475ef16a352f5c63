"""KeypointExtractor (ORB / SIFT) and near-duplicate matching on the real sample images."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from visionjobs.settings import Settings
from visionjobs.vision.keypoints import KeypointExtractor, KeypointSet, match_score

UNRELATED = {"chelsea": "rocket", "coffee": "astronaut", "astronaut": "coffee", "rocket": "chelsea"}


def test_orb_count_capped_and_descriptor_layout(orb, sample_images) -> None:
    kps = orb.extract(sample_images["astronaut"])
    assert 0 < len(kps) <= 500
    assert kps.descriptor_size == 32 and kps.descriptor_dtype == "uint8" and kps.detector == "orb"
    assert len(kps.descriptors) == len(kps) * 32 == len(kps) * kps.descriptor_bytes
    assert kps.descriptor_array().shape == (len(kps), 32)
    assert kps.image_size == (400, 400)
    x, y, size, angle, response = kps.keypoints[0]
    assert 0 <= x < 400 and 0 <= y < 400 and size > 0 and -1 <= angle < 360 and response > 0
    responses = [k[4] for k in kps.keypoints]
    assert responses == sorted(responses, reverse=True)  # strongest first

    small = KeypointExtractor("orb", max_keypoints=25).extract(sample_images["astronaut"])
    assert len(small) == 25 and len(small.descriptors) == 25 * 32
    # the cap keeps the strongest ones
    assert small.keypoints[0][4] == pytest.approx(max(k[4] for k in kps.keypoints), rel=0.2)


def test_flat_image_has_no_keypoints(orb) -> None:
    for img in (np.full((120, 160, 3), 200, np.uint8), np.zeros((0, 0, 3), np.uint8), np.zeros((5, 5), np.uint8)):
        kps = orb.extract(img)
        assert len(kps) == 0 and kps.keypoints == [] and kps.descriptors == b""
        assert kps.descriptor_array().shape == (0, 32)


def test_grey_and_bgr_inputs_agree(orb, sample_images) -> None:
    img = sample_images["chelsea"]
    grey = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    assert orb.extract(img) == orb.extract(grey)
    assert orb.extract(img) == orb.extract(img)  # deterministic


def test_match_score_ranks_altered_copies_above_unrelated(orb, sample_images) -> None:
    sets = {name: orb.extract(img) for name, img in sample_images.items()}
    for altered in ("chelsea__crop", "chelsea__jpeg_q10", "coffee__canvas", "astronaut__crop", "rocket__crop"):
        original = altered.split("__")[0]
        same = match_score(sets[altered], sets[original])
        other = match_score(sets[altered], sets[UNRELATED[original]])
        assert same > 0.15 and same > other + 0.1, (altered, same, other)
    assert match_score(sets["chelsea"], sets["chelsea"]) == pytest.approx(1.0)
    a, b = sets["chelsea__crop"], sets["chelsea"]
    assert match_score(a, b) == match_score(b, a)
    assert match_score(a, KeypointSet([], b"", 32, "uint8")) == 0.0


def test_flipped_copy_matches_original_better_than_unrelated(orb, sample_images) -> None:
    for name in ("chelsea", "coffee", "rocket"):
        original, flipped = sample_images[name], sample_images[f"{name}__flip"]
        unrelated = sample_images[UNRELATED[name]]
        flip_score = orb.near_duplicate_score(flipped, original)
        unrelated_score = orb.near_duplicate_score(flipped, unrelated)
        assert flip_score > 0.5 and flip_score > unrelated_score + 0.3, (name, flip_score, unrelated_score)
        # it works through the mirrored extraction: plain ORB descriptors are not mirror-invariant
        mirrored = orb.extract(original, mirror=True)
        assert match_score(orb.extract(flipped), mirrored) > 0.5
        assert orb.near_duplicate_score(flipped, original, mirror=False) < 0.2


def test_unverified_matching(orb, sample_images) -> None:
    crop, original = orb.extract(sample_images["rocket__crop"]), orb.extract(sample_images["rocket"])
    assert match_score(crop, original, verify=False) >= match_score(crop, original) > 0
    with pytest.raises(ValueError):
        match_score(crop, original, ratio=0)


def test_sift(sample_images) -> None:
    sift = KeypointExtractor("sift", max_keypoints=60)
    kps = sift.extract(sample_images["chelsea"])
    assert 0 < len(kps) <= 60  # SIFT may add orientations beyond nfeatures: the cap still holds
    assert kps.descriptor_dtype == "float32" and kps.descriptor_size == 128
    assert len(kps.descriptors) == len(kps) * 128 * 4
    assert kps.descriptor_array().dtype == np.float32
    crop = sift.extract(sample_images["chelsea__crop"])
    assert match_score(crop, kps) > match_score(crop, sift.extract(sample_images["rocket"]))
    with pytest.raises(ValueError):
        match_score(kps, KeypointExtractor("orb", 10).extract(sample_images["chelsea"]))


def test_large_images_are_downscaled_but_coordinates_kept(sample_images) -> None:
    img = cv2.resize(sample_images["coffee"], None, fx=3, fy=3, interpolation=cv2.INTER_LINEAR)  # 1200x801
    capped = KeypointExtractor("orb", 200, max_side=400).extract(img)
    assert capped.image_size == (1200, 801)
    xs = [k[0] for k in capped.keypoints]
    ys = [k[1] for k in capped.keypoints]
    assert max(xs) > 400 and max(xs) < 1200 and max(ys) < 801  # reported in full-size pixels
    reference = KeypointExtractor("orb", 200, max_side=None).extract(sample_images["coffee"])
    assert match_score(capped, reference, verify=False) > 0.1


def test_from_settings_and_validation() -> None:
    ext = KeypointExtractor.from_settings(Settings(detector="sift", max_keypoints=42))
    assert (ext.detector, ext.max_keypoints, ext.descriptor_size) == ("sift", 42, 128)
    assert KeypointExtractor.from_settings(Settings()).detector == "orb"
    with pytest.raises(ValueError):
        KeypointExtractor("surf")
    with pytest.raises(ValueError):
        KeypointExtractor("orb", 0)
    with pytest.raises(ValueError):
        KeypointExtractor("orb").extract(np.zeros((10, 10, 3), np.float32))
