"""The embedding agent without Kafka: result records, image loading, batch processing with fakes and
with the real model, timeouts, internal errors, and Faust's ``agent.test_context()``."""

from __future__ import annotations

import asyncio
import shutil
import threading
import time

import numpy as np
import pytest

from visionjobs import metrics
from visionjobs.agents.embedding import (EmbeddingAgent, Failure, ImageSource, check_vector, embedding_result,
                                         error_text, register_embedding)
from visionjobs.records import ProductImageReady, ProductsImagesReadyBatch, result_event_id, utcnow
from visionjobs.vision.errors import ImageDecodeError, ImageLoadError


def request(job_id="job-1", image_id="a.jpg", uri="a.jpg", product_id="a"):
    return ProductImageReady("e1", job_id, product_id, image_id, uri, utcnow())


class FakeEmbedder:
    """Deterministic 4-d vectors from the mean colour; fails on demand."""

    provider = "FakeProvider"
    dim = 4

    def __init__(self, fail_on_shape=None, sleep_s=0.0):
        self.calls: list[int] = []
        self.threads: set[str] = set()
        self.fail_on_shape = fail_on_shape
        self.sleep_s = sleep_s

    def embed(self, images):
        self.calls.append(len(images))
        self.threads.add(threading.current_thread().name)
        if self.sleep_s:
            time.sleep(self.sleep_s)
        if self.fail_on_shape is not None and any(im.shape == self.fail_on_shape for im in images):
            raise RuntimeError("cannot embed that one")
        out = np.array([[im.mean(), im.shape[0], im.shape[1], 1.0] for im in images], dtype=np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


# ----------------------------------------------------------------------------- pure parts
def test_embedding_result_ok_and_failed():
    ok = embedding_result(request(), "m", vector=np.array([0.6, 0.8], dtype=np.float32))
    assert (ok.status, ok.error, ok.model, ok.product_id) == ("OK", None, "m", "a")
    assert ok.embedding == pytest.approx([0.6, 0.8]) and all(type(x) is float for x in ok.embedding)
    assert ok.event_id == result_event_id("job-1", "a.jpg", "EMBEDDINGS")
    bad = embedding_result(request(), "m", error="outside_roots: nope")
    assert (bad.status, bad.error, bad.embedding) == ("FAILED", "outside_roots: nope", [])
    assert bad.event_id == ok.event_id  # deterministic: a reprocessed image keeps its id
    long = embedding_result(request(), "m", error="x" * 5000)
    assert len(long.error) == 1000 and long.error.endswith("...")
    with pytest.raises(ValueError):
        embedding_result(request(), "m")
    with pytest.raises(ValueError):
        embedding_result(request(), "m", vector=[1.0], error="both")


def test_error_text_keeps_reason_codes():
    assert error_text(ImageLoadError("outside_roots", "/etc/x is outside")) == "outside_roots: /etc/x is outside"
    assert error_text(ImageDecodeError("unsupported_format", "no")) == "unsupported_format: no"
    assert error_text(TimeoutError()) == "timeout"
    assert error_text(asyncio.TimeoutError("slow")) == "timeout: slow"
    assert error_text(RuntimeError("boom")) == "internal: RuntimeError: boom"


def test_check_vector_refuses_non_finite():
    assert isinstance(check_vector(np.array([np.nan, 1.0])), Failure)
    assert isinstance(check_vector(np.array([np.inf])), Failure)
    assert isinstance(check_vector(np.zeros((2, 2))), Failure)
    v = np.array([0.0, 1.0])
    assert check_vector(v) is v


def test_image_source_loads_within_the_roots(settings, images_dir, tmp_path):
    extra = settings.image_roots[1]
    (extra / "garbage.jpg").write_bytes(b"not an image" * 10)
    (tmp_path / "out").mkdir()
    shutil.copyfile(images_dir / "chelsea.jpg", tmp_path / "out" / "chelsea.jpg")
    source = ImageSource(settings)
    try:
        got = asyncio.run(source.load_many([
            "chelsea.jpg", str(images_dir / "coffee.jpg"), (images_dir / "rocket.jpg").as_uri(),
            str(tmp_path / "out" / "chelsea.jpg"), str(extra / "garbage.jpg"), "missing.jpg",
            "../images/chelsea.jpg", "ftp://example.com/a.jpg"]))
    finally:
        source.close()
    assert [g.shape[2] for g in got[:3]] == [3, 3, 3]
    reasons = [g.error.split(":")[0] for g in got[3:]]
    assert reasons == ["outside_roots", "unsupported_format", "not_found", "outside_roots", "scheme_not_allowed"]


# ----------------------------------------------------------------------------- the batch
def make_agent(app, settings, recorder, embedder):
    agent = EmbeddingAgent(app, settings, embedder_factory=lambda: embedder)
    recorder.hook("results", agent.output)
    recorder.hook("dead", agent.dead_letters.output)
    return agent


def test_batch_one_result_per_image_and_bad_events_dead_lettered(app, settings, recorder, make_event, tmp_path):
    from visionjobs.codec import get_codec

    embedder = FakeEmbedder()
    agent = make_agent(app, settings, recorder, embedder)
    (tmp_path / "out.jpg").write_bytes((settings.image_roots[0] / "chelsea.jpg").read_bytes())
    events = [
        make_event("job-1", "a.jpg", "chelsea.jpg", partition=5),
        make_event("job-1", "b.jpg", "coffee.jpg", partition=5),
        make_event(raw=b"\x00garbage", partition=5),
        make_event(raw=get_codec().encode(ProductsImagesReadyBatch("job-1", "e", 2)), partition=5),
        make_event("job-1", "nokey.jpg", "coffee.jpg", key=None, partition=5),
        make_event("job-1", "out.jpg", str(tmp_path / "out.jpg"), partition=5),
        make_event("job-2", "c.jpg", "rocket.jpg", partition=1),
    ]
    failed_before = metrics.RESULTS.labels("EMBEDDINGS", "FAILED")._value.get()
    asyncio.run(agent.handle(events))

    results = recorder.of("results")
    assert [r.image_id for _, _, r in results] == ["a.jpg", "b.jpg", "out.jpg", "c.jpg"]  # input order
    assert [(p, k) for p, k, _ in results] == [(5, b"job-1")] * 3 + [(1, b"job-2")]  # the input's partition
    by_id = {r.image_id: r for _, _, r in results}
    assert by_id["a.jpg"].status == "OK" and len(by_id["a.jpg"].embedding) == 4
    assert by_id["a.jpg"].model == settings.model_name
    assert by_id["out.jpg"].status == "FAILED" and by_id["out.jpg"].error.startswith("outside_roots: ")
    assert embedder.calls == [3]  # one model run for the batch's decoded images
    assert embedder.threads == {"vj-embed_0"}  # off the event loop, on the agent's one thread
    dead = recorder.of("dead")
    assert [d.error.split(":")[0] for _, _, d in dead] == ["bad_magic", "unexpected_schema", "missing_key"]
    assert all(p == 5 and d.source_topic == events[0].message.topic for p, _, d in dead)
    assert metrics.RESULTS.labels("EMBEDDINGS", "FAILED")._value.get() == failed_before + 1


def test_a_failing_image_fails_alone(app, settings, recorder, make_event, images_dir):
    from visionjobs.vision.loader import decode_image

    rocket_shape = decode_image((images_dir / "rocket.jpg").read_bytes()).shape
    agent = make_agent(app, settings, recorder, FakeEmbedder(fail_on_shape=rocket_shape))
    events = [make_event("j", f"{n}.jpg", n + ".jpg") for n in ("chelsea", "rocket", "astronaut")]
    asyncio.run(agent.handle(events))
    statuses = {r.image_id: (r.status, r.error) for _, _, r in recorder.of("results")}
    assert statuses["chelsea.jpg"] == ("OK", None) and statuses["astronaut.jpg"] == ("OK", None)
    assert statuses["rocket.jpg"][0] == "FAILED"
    assert statuses["rocket.jpg"][1] == "inference_failed: RuntimeError: cannot embed that one"


class PreparingEmbedder(FakeEmbedder):
    """A fake with the real embedder's split: ``prepare`` per image (on the loading threads), then
    ``embed_prepared`` for the batch. Preparing fails on demand for one image shape."""

    def __init__(self, fail_prepare_on_shape=None):
        super().__init__()
        self.fail_prepare_on_shape = fail_prepare_on_shape
        self.prepare_threads: set[str] = set()

    def prepare(self, image):
        self.prepare_threads.add(threading.current_thread().name)
        if image.shape == self.fail_prepare_on_shape:
            raise ValueError("image is empty")
        return image[:8, :8]  # small and the same shape for every image, as the real one

    def embed_prepared(self, prepared):
        assert all(p.shape == (8, 8, 3) for p in prepared)
        return self.embed(prepared)

    def warm_up(self):
        self.warm_ups = getattr(self, "warm_ups", 0) + 1
        self.threads.add(threading.current_thread().name)
        return 0.001


def test_preprocessing_runs_on_the_loading_threads_and_fails_alone(app, settings, recorder, make_event,
                                                                   images_dir):
    from visionjobs.vision.loader import decode_image

    rocket_shape = decode_image((images_dir / "rocket.jpg").read_bytes()).shape
    embedder = PreparingEmbedder(fail_prepare_on_shape=rocket_shape)
    agent = make_agent(app, settings, recorder, embedder)
    events = [make_event("j", f"{n}.jpg", n + ".jpg") for n in ("chelsea", "rocket", "astronaut", "retina")]
    asyncio.run(agent.handle(events))
    statuses = {r.image_id: (r.status, r.error) for _, _, r in recorder.of("results")}
    assert statuses.pop("rocket.jpg") == ("FAILED", "inference_failed: ValueError: image is empty")
    assert set(statuses.values()) == {("OK", None)}
    assert embedder.prepare_threads and all(t.startswith("vj-load") for t in embedder.prepare_threads)
    assert embedder.calls == [3] and embedder.threads == {"vj-embed_0"}  # one model run, off the loop
    assert embedder.warm_ups == 1  # the batch shape ran once at start, on the inference thread
    agent.close()


def test_real_model_prepared_on_loading_threads_equals_embedding_the_originals(app, settings, recorder,
                                                                              make_event, images_dir):
    from visionjobs.vision.loader import decode_image

    agent = EmbeddingAgent(app, settings)
    recorder.hook("results", agent.output)
    names = ["chelsea.jpg", "coffee__canvas.jpg", "rocket.jpg"]
    asyncio.run(agent.handle([make_event("j", n, n) for n in names]))
    got = np.array([r.embedding for _, _, r in recorder.of("results")], dtype=np.float32)
    direct = agent.embedder.embed([decode_image((images_dir / n).read_bytes()) for n in names])
    assert got.shape == (3, 1280) and np.array_equal(got, direct)
    agent.close()


def test_inference_timeout_fails_the_batch_and_the_next_batch_runs(app, settings, recorder, make_event):
    settings = settings.model_copy(update={"inference_timeout_s": 0.2})
    slow = FakeEmbedder(sleep_s=1.0)
    agent = make_agent(app, settings, recorder, slow)

    async def run():
        await agent.handle([make_event("j", "a.jpg", "chelsea.jpg")])
        slow.sleep_s = 0.0
        await agent.handle([make_event("j", "b.jpg", "coffee.jpg")])

    started = time.monotonic()
    asyncio.run(run())
    assert time.monotonic() - started < 0.9  # the second batch did not queue behind the stuck run
    (_, _, a), (_, _, b) = recorder.of("results")
    assert (a.status, a.error) == ("FAILED", "timeout: inference took longer than 0.2s")
    assert b.status == "OK"


def test_unexpected_error_fails_the_batch_with_internal(app, settings, recorder, make_event):
    agent = make_agent(app, settings, recorder, FakeEmbedder())

    async def broken(uris, prepare=None):
        raise KeyError("bug")

    agent.images.load_many = broken
    asyncio.run(agent.handle([make_event("j", "a.jpg"), make_event("j", "b.jpg")]))
    results = [r for _, _, r in recorder.of("results")]
    assert [(r.image_id, r.status, r.error) for r in results] == [
        ("a.jpg", "FAILED", "internal: KeyError: 'bug'"), ("b.jpg", "FAILED", "internal: KeyError: 'bug'")]


def test_real_model_on_the_sample_images(app, settings, recorder, make_event, images_dir):
    """The shipped model, as the worker runs it: 1280-d unit vectors, crops near their originals."""
    agent = EmbeddingAgent(app, settings)
    recorder.hook("results", agent.output)
    names = ["chelsea.jpg", "chelsea__crop.jpg", "rocket.jpg", "coffee.jpg"]

    async def run():
        await agent.start()
        await agent.handle([make_event("j", n, n) for n in names])

    asyncio.run(run())
    assert agent.embedder.provider in ("CPUExecutionProvider", "CUDAExecutionProvider")
    vecs = {r.image_id: np.asarray(r.embedding) for _, _, r in recorder.of("results")}
    assert all(v.shape == (1280,) and abs(np.linalg.norm(v) - 1) < 1e-3 for v in vecs.values())
    crop = vecs["chelsea__crop.jpg"]
    assert crop @ vecs["chelsea.jpg"] > max(crop @ vecs["rocket.jpg"], crop @ vecs["coffee.jpg"])


def test_agent_test_context_stages_results_on_the_input_partition(app, settings, recorder, make_event):
    """Faust's recipe (docs/userguide/testing.rst): run the real agent function on an in-memory
    channel with ``agent.test_context()`` and ``put`` raw-bytes events into it. The outputs go
    through ``CoPartitionedOutput.stage`` (recorded here instead of sent to Kafka)."""
    embedder = FakeEmbedder()
    state = register_embedding(app, settings, embedder_factory=lambda: embedder)
    recorder.hook("results", state.output)
    recorder.hook("dead", state.dead_letters.output)
    ok = make_event("job-9", "a.jpg", "chelsea.jpg", partition=6).message
    bad = make_event(raw=b"nope", partition=6).message

    async def run():
        async with state.agent.test_context() as agent:
            await agent.put(value=ok.value, key=ok.key, partition=6)
            await agent.put(value=bad.value, key=bad.key, partition=6)
            for _ in range(200):
                if recorder.of("results") and recorder.of("dead"):
                    break
                await asyncio.sleep(0.02)

    asyncio.run(run())
    ((partition, key, result),) = recorder.of("results")
    assert (partition, key, result.image_id, result.status) == (6, b"job-9", "a.jpg", "OK")
    ((dpartition, _, letter),) = recorder.of("dead")
    assert dpartition == 6 and letter.error.startswith("bad_magic")
    assert embedder.calls == [1]


def test_a_result_that_cannot_be_encoded_is_published_as_failed(app, settings, recorder, make_event):
    from dataclasses import replace

    agent = make_agent(app, settings, recorder, FakeEmbedder())

    async def compute(items):
        for item in items:
            good = embedding_result(item.request, "m", vector=[1.0])
            item.output = replace(good, embedding=["not a float"])  # fastavro refuses this

    agent.compute = compute
    asyncio.run(agent.handle([make_event("j", "a.jpg", "chelsea.jpg")]))
    ((_, _, r),) = recorder.of("results")
    assert r.status == "FAILED" and r.error.startswith("internal: cannot encode the result: encode_failed")
