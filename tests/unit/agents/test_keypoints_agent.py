"""The keypoint agent without Kafka: result records, one extractor per thread, the batch."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from visionjobs.agents.keypoints import KeypointsAgent, keypoints_result, register_keypoints
from visionjobs.records import Keypoint, ProductImageReady, result_event_id, utcnow
from visionjobs.vision.keypoints import KeypointExtractor, KeypointSet


def request(image_id="a.jpg"):
    return ProductImageReady("e1", "job-1", "prod", image_id, image_id, utcnow())


def test_keypoints_result_from_a_keypoint_set():
    desc = np.arange(64, dtype=np.uint8).reshape(2, 32)
    kps = KeypointSet([(1.0, 2.0, 3.0, 4.0, 5.0), (6.0, 7.0, 8.0, -1.0, 0.5)], desc.tobytes(), 32, "uint8", "orb",
                      (10, 10))
    ok = keypoints_result(request(), "orb", keypoints=kps)
    assert (ok.status, ok.error, ok.detector, ok.descriptor_size) == ("OK", None, "orb", 32)
    assert ok.keypoints == [Keypoint(1.0, 2.0, 3.0, 4.0, 5.0), Keypoint(6.0, 7.0, 8.0, -1.0, 0.5)]
    assert ok.descriptors == desc.tobytes()
    assert ok.event_id == result_event_id("job-1", "a.jpg", "KEYPOINTS")
    sift = KeypointSet([(1.0, 1.0, 1.0, 1.0, 1.0)], np.zeros((1, 128), np.float32).tobytes(), 128, "float32",
                       "sift")
    assert keypoints_result(request(), "sift", keypoints=sift).descriptor_size == 512  # bytes per row
    bad = keypoints_result(request(), "orb", error="unsupported_format: no")
    assert (bad.status, bad.keypoints, bad.descriptors, bad.descriptor_size) == ("FAILED", [], b"", 32)
    with pytest.raises(ValueError):
        keypoints_result(request(), "orb")
    broken = KeypointSet([(1.0, 1.0, 1.0, 1.0, 1.0)], b"short", 32, "uint8", "orb")
    with pytest.raises(ValueError, match="descriptor bytes"):
        keypoints_result(request(), "orb", keypoints=broken)


def test_batch_with_one_extractor_per_thread(app, settings, recorder, make_event, tmp_path):
    made: list[tuple[str, int]] = []

    def factory():
        extractor = KeypointExtractor(settings.detector, settings.max_keypoints)
        made.append((threading.current_thread().name, id(extractor)))
        return extractor

    agent = KeypointsAgent(app, settings, extractor_factory=factory)
    recorder.hook("results", agent.output)
    recorder.hook("dead", agent.dead_letters.output)
    (settings.image_roots[1] / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    names = ["chelsea.jpg", "coffee.jpg", "rocket.jpg", "astronaut.jpg", "retina.jpg", "rocket__crop.jpg"]
    events = [make_event("job-1", n, n, partition=2) for n in names]
    events += [make_event("job-1", "garbage.png", "garbage.png", partition=2), make_event(raw=b"x", partition=2)]

    async def run():
        await agent.start()
        await agent.handle(events)

    asyncio.run(run())
    results = [r for _, _, r in recorder.of("results")]
    assert [r.image_id for r in results] == names + ["garbage.png"]
    assert {p for p, _, _ in recorder.of("results")} == {2}
    for r in results[:-1]:
        assert r.status == "OK" and 0 < len(r.keypoints) <= settings.max_keypoints
        assert len(r.descriptors) == 32 * len(r.keypoints) and r.descriptor_size == 32
        responses = [k.response for k in r.keypoints]
        assert responses == sorted(responses, reverse=True)
    assert results[-1].status == "FAILED" and results[-1].error.startswith("bad_header")
    assert [d.error.split(":")[0] for _, _, d in recorder.of("dead")] == ["bad_magic"]
    # one probe in start(), then one extractor per pool thread, each built in its own thread
    pool_threads = [name for name, _ in made[1:]]
    assert len(pool_threads) == len(set(pool_threads)) <= settings.keypoints_concurrency
    assert all(name.startswith("vj-keypoints") for name in pool_threads)
    agent.close()


def test_extraction_error_is_a_failed_result(app, settings, recorder, make_event):
    class Broken:
        detector = "orb"
        max_keypoints = 10

        def extract(self, image):
            raise MemoryError("too big")

    agent = KeypointsAgent(app, settings, extractor_factory=Broken)
    recorder.hook("results", agent.output)
    asyncio.run(agent.handle([make_event("j", "a.jpg", "chelsea.jpg")]))
    ((_, _, r),) = recorder.of("results")
    assert (r.status, r.error) == ("FAILED", "extract_failed: MemoryError: too big")


def test_registered_agent_is_single_actor_and_batches(app, settings):
    state = register_keypoints(app, settings)
    assert state.agent.concurrency == 1  # parallelism comes from the thread pool (see module doc)
    assert state.batch_size() == max(settings.batch_size, settings.keypoints_concurrency)


def test_sift_by_setting(app, settings, recorder, make_event):
    settings = settings.model_copy(update={"detector": "sift", "max_keypoints": 50})
    agent = KeypointsAgent(app, settings)
    recorder.hook("results", agent.output)
    asyncio.run(agent.handle([make_event("j", "a.jpg", "astronaut.jpg")]))
    ((_, _, r),) = recorder.of("results")
    assert (r.status, r.detector, r.descriptor_size) == ("OK", "sift", 512)
    assert 0 < len(r.keypoints) <= 50 and len(r.descriptors) == 512 * len(r.keypoints)
    agent.close()
