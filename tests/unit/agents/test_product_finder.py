"""The product-finder side and the demo's pure parts (no broker): collecting a job's images, ids,
the events of a job, the roots check, nearest neighbours, the smoke checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from visionjobs.demo import SmokeJob, check_completions, nearest_neighbours
from visionjobs.product_finder import (ImageRef, SubmitError, collect_images, image_event_id, job_events,
                                       outside_roots, product_id_for)
from visionjobs.records import (JobPhaseCompleted, ProductImageReady, ProductsCollectionsCompleted,
                                ProductsImagesReadyBatch, utcnow)
from visionjobs.topics import COLLECTIONS_COMPLETED, IMAGES_READY, IMAGES_READY_BATCH


def test_product_id_is_the_stem_before_the_double_underscore():
    assert product_id_for("chelsea__crop.jpg") == "chelsea"
    assert product_id_for("coffee.jpg") == "coffee"
    assert product_id_for("https://cdn.example.com/x/shoe__side.webp") == "shoe"
    assert product_id_for("noext") == "noext"


def test_collect_from_directory_list_file_and_uris(images_dir, tmp_path):
    from_dir = collect_images([images_dir])
    assert [i.image_id for i in from_dir] == sorted(p.name for p in images_dir.glob("*.jpg"))
    assert all(Path(i.uri).is_absolute() and i.path is not None for i in from_dir)
    assert {i.product_id for i in from_dir} == {"astronaut", "chelsea", "coffee", "hubble_deep_field", "retina",
                                                "rocket"}

    listing = tmp_path / "job.txt"
    listing.write_text(f"# a job\n{images_dir / 'chelsea.jpg'}\n\n{images_dir / 'chelsea.jpg'}\n"
                       f"{(images_dir / 'rocket.jpg').as_uri()}\nhttps://example.com/p/shoe__a.jpg\n")
    (tmp_path / "local.png").write_bytes(b"x")
    (tmp_path / "other.txt").write_text("local.png\n")  # relative to the list file
    got = collect_images([listing, tmp_path / "other.txt"], uri_style="file")
    assert [i.image_id for i in got] == ["chelsea.jpg", "rocket.jpg", "shoe__a.jpg", "local.png"]
    assert got[0].uri == (images_dir / "chelsea.jpg").as_uri()  # same image twice counts once
    assert got[2].uri == "https://example.com/p/shoe__a.jpg" and got[2].path is None
    assert got[3].path == tmp_path / "local.png"


def test_same_file_name_in_two_directories_gets_distinct_ids(tmp_path):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "same__x.jpg").write_bytes(b"x")
    ids = [i.image_id for i in collect_images([tmp_path / "a", tmp_path / "b"])]
    assert len(set(ids)) == 2 and all(i.startswith("same__x.jpg~") for i in ids)


def test_outside_roots(settings, images_dir, tmp_path):
    (tmp_path / "x.jpg").write_bytes(b"x")
    inside = collect_images([images_dir / "chelsea.jpg"])
    outside = collect_images([tmp_path / "x.jpg"])
    remote = [ImageRef("https://example.com/a.jpg", "a.jpg", "a")]
    assert outside_roots(inside + outside + remote, settings) == outside


def test_job_events_in_publishing_order():
    images = [ImageRef("/r/a__1.jpg", "a__1.jpg", "a"), ImageRef("/r/b.jpg", "b.jpg", "b")]
    events = job_events("job-7", images)
    assert [t for t, _ in events] == [IMAGES_READY, IMAGES_READY, COLLECTIONS_COMPLETED, IMAGES_READY_BATCH]
    first = events[0][1]
    assert isinstance(first, ProductImageReady)
    assert (first.job_id, first.image_id, first.product_id, first.image_uri) == ("job-7", "a__1.jpg", "a", "/r/a__1.jpg")
    assert first.event_id == image_event_id("job-7", "a__1.jpg")  # stable across resubmits
    assert isinstance(events[2][1], ProductsCollectionsCompleted)
    assert events[3][1] == ProductsImagesReadyBatch("job-7", events[3][1].event_id, 2)
    assert job_events("job-0", [])[-1][1].total_images == 0


def test_nearest_neighbours():
    vecs = {"a": [1.0, 0.0, 0.0], "a2": [0.9, 0.1, 0.0], "b": [0.0, 1.0, 0.0], "b2": [0.0, 2.0, 0.2]}
    nn = nearest_neighbours(vecs)
    assert {k: v[0] for k, v in nn.items()} == {"a": "a2", "a2": "a", "b": "b2", "b2": "b"}
    assert nn["b"][1] == pytest.approx(2.0 / np.linalg.norm([0, 2.0, 0.2]))
    assert nearest_neighbours({"only": [1.0]}) == {"only": (None, None)}


def _completion(job, phase, done, failed, status="COMPLETED"):
    now = utcnow()
    return JobPhaseCompleted("e", job, phase, status, done, done, done - failed, failed, now, now)


def test_smoke_checks_flag_multiple_and_wrong_completions():
    ok = SmokeJob("samples", "j1", 3, 1)
    check_completions(ok, {"EMBEDDINGS": [_completion("j1", "EMBEDDINGS", 3, 1)],
                           "KEYPOINTS": [_completion("j1", "KEYPOINTS", 3, 1)]})
    assert ok.ok
    dup = SmokeJob("samples", "j2", 3, 0)
    check_completions(dup, {"EMBEDDINGS": [_completion("j2", "EMBEDDINGS", 3, 0)] * 2,
                            "KEYPOINTS": [_completion("j2", "KEYPOINTS", 3, 1)]})
    assert dup.problems[0] == "MULTIPLE EMBEDDINGS completions: 2"
    assert "KEYPOINTS (status, total, done, succeeded, failed)" in dup.problems[1]
    missing = SmokeJob("empty", "j3", 0, 0)
    check_completions(missing, {"EMBEDDINGS": [_completion("j3", "EMBEDDINGS", 0, 0)]})
    assert missing.problems == ["no KEYPOINTS completion"]


def test_submit_refuses_images_outside_the_roots(tmp_path, monkeypatch):
    from visionjobs.cli import main
    from visionjobs.settings import get_settings

    (tmp_path / "x.jpg").write_bytes(b"x")
    monkeypatch.setenv("VISIONJOBS_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(main, ["submit", str(tmp_path / "x.jpg"), "--no-progress"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code != 0
    assert "outside the image roots" in result.output and "--allow-outside-roots" in result.output
    with pytest.raises(SubmitError):
        from visionjobs.product_finder import submit
        from visionjobs.settings import Settings

        submit(Settings(bootstrap_servers="127.0.0.1:1"), [tmp_path / "x.jpg"], create_topics=False)


def test_a_missing_source_is_refused_but_a_missing_listed_file_is_kept(tmp_path):
    with pytest.raises(SubmitError, match="no such file"):
        collect_images([tmp_path / "nope"])
    (tmp_path / "list.txt").write_text("gone.jpg\n")
    (ref,) = collect_images([tmp_path / "list.txt"])
    assert ref.uri == str(tmp_path / "gone.jpg")  # the workers report it as FAILED not_found
