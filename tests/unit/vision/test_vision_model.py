"""The shipped EfficientNet-Lite0 ONNX model through Embedder: integrity, I/O, ImageNet sanity,
near-duplicate retrieval on the sample images."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from visionjobs.settings import PACKAGE_DIR, Settings
from visionjobs.vision.embedder import Embedder

MODEL_DIR = PACKAGE_DIR / "models"
MODEL_SHA256 = "d717a6ada9267261c686b7f10e736f2702d021aad70e964ef5fbdecf0bbd21e6"
ORIGINALS = ("astronaut", "chelsea", "coffee", "hubble_deep_field", "retina", "rocket")
IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO, CUP = 967, 968


def test_model_file_and_licence_shipped() -> None:
    data = (MODEL_DIR / "efficientnet_lite0_embed.onnx").read_bytes()
    assert hashlib.sha256(data).hexdigest() == MODEL_SHA256
    assert "Apache" in (MODEL_DIR / "LICENSE-efficientnet-lite0-weights").read_text()
    assert MODEL_SHA256 in (MODEL_DIR / "README.md").read_text()
    assert (MODEL_DIR / "NOTICE").is_file()


def test_io_names_and_shapes(session_info) -> None:
    session = session_info.session
    (inp,) = session.get_inputs()
    assert inp.name == "pixel_values" and inp.type == "tensor(float)"
    assert isinstance(inp.shape[0], str) and inp.shape[1:] == [3, 224, 224]  # dynamic batch only
    outputs = {o.name: o for o in session.get_outputs()}
    assert list(outputs) == ["embedding", "logits"]
    assert outputs["logits"].shape[1:] == [1000]
    emb, logits = session.run(None, {"pixel_values": np.zeros((2, 3, 224, 224), np.float32)})
    assert emb.shape == (2, 1280) and logits.shape == (2, 1000)
    assert emb.dtype == np.float32 and logits.dtype == np.float32


def test_embeddings_are_unit_length_and_batch_independent(embedder, sample_images) -> None:
    names = ["chelsea", "coffee", "rocket"]
    emb = embedder.embed([sample_images[n] for n in names])
    assert embedder.dim == 1280
    assert emb.shape == (3, 1280) and emb.dtype == np.float32
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)
    alone = embedder.embed([sample_images["coffee"]])
    # the same result in or out of a micro-batch: to 1e-5 on CPU; on CUDA cuDNN picks its convolution
    # algorithm per batch shape and onnxruntime allows TF32, so a batch of one differs by ~2e-5 there
    # (seen on an H200: cosine to the CPU result 0.999997)
    atol = 1e-5 if embedder.provider == "CPUExecutionProvider" else 2e-4
    assert np.allclose(alone[0], emb[1], atol=atol)
    assert float(alone[0] @ emb[1]) > 0.9999
    assert embedder.embed([]).shape == (0, 1280)


def test_prepare_then_embed_prepared_equals_embed(embedder, sample_images) -> None:
    images = [sample_images[n] for n in ("chelsea", "coffee", "rocket__crop")]
    prepared = [embedder.prepare(img) for img in images]
    assert np.array_equal(embedder.embed_prepared(prepared), embedder.embed(images))
    assert embedder.embed_prepared([]).shape == (0, 1280)


def test_imagenet_sanity(embedder, sample_images) -> None:
    top = embedder.classify([sample_images["chelsea"], sample_images["coffee"]], top_k=5)
    cat_classes = {c for c, _ in top[0]}
    coffee_classes = {c for c, _ in top[1]}
    assert cat_classes & set(IMAGENET_CATS), top[0]
    assert coffee_classes & {ESPRESSO, CUP}, top[1]
    assert top[0][0][0] in IMAGENET_CATS and top[1][0][0] == ESPRESSO  # and they are the top-1
    probs = [p for _, p in top[0]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
    emb, logits = embedder.embed_with_logits([sample_images["chelsea"]])
    assert logits.shape == (1, 1000) and emb.shape == (1, 1280)
    assert int(logits[0].argmax()) == top[0][0][0]


def test_altered_copies_find_their_original(embedder, sample_images) -> None:
    names = sorted(sample_images)
    emb = embedder.embed([sample_images[n] for n in names])
    sims = emb @ emb.T
    index = {n: i for i, n in enumerate(names)}
    altered = [n for n in names if "__" in n]
    assert len(altered) >= 5
    originals = [index[o] for o in ORIGINALS]
    for name in altered:
        original = name.split("__")[0]
        row = sims[index[name]]
        # nearest original is its own original ...
        best_original = ORIGINALS[int(np.argmax(row[originals]))]
        assert best_original == original, (name, best_original)
        # ... and the nearest other sample image belongs to the same photo
        row = row.copy()
        row[index[name]] = -np.inf
        nearest = names[int(np.argmax(row))]
        assert nearest.split("__")[0] == original, (name, nearest)
        assert row[index[original]] > 0.7, (name, row[index[original]])


def test_trimming_helps_the_canvas_copy(session_info, sample_images) -> None:
    trimmed = Embedder(session_info, trim=True).embed([sample_images["coffee__canvas"], sample_images["coffee"]])
    raw = Embedder(session_info, trim=False).embed([sample_images["coffee__canvas"], sample_images["coffee"]])
    assert float(trimmed[0] @ trimmed[1]) > float(raw[0] @ raw[1])


def test_from_settings_and_validation(session_info) -> None:
    embedder = Embedder.from_settings(Settings(), session_info=session_info)
    assert (embedder.input_name, embedder.output_name, embedder.size) == ("pixel_values", "embedding", 224)
    assert embedder.mean == (127.0, 127.0, 127.0) and embedder.std == (128.0, 128.0, 128.0)
    assert embedder.provider == session_info.provider
    built = Embedder.from_settings(Settings(ort_intra_op_threads=1))
    assert built.dim == 1280
    with pytest.raises(ValueError, match="no input"):
        Embedder(session_info, input_name="images")
    with pytest.raises(ValueError, match="no output"):
        Embedder(session_info, output_name="features")
    with pytest.raises(ValueError, match="fixed"):
        Embedder(session_info, size=256)
    logits_only = Embedder(session_info, output_name="logits", logits_name=None)
    assert logits_only.dim == 1000
    with pytest.raises(RuntimeError):
        logits_only.logits([np.zeros((8, 8, 3), np.uint8)])


class ShapeRecorder:
    """The real session, with the batch size of every run recorded."""

    def __init__(self, session):
        self.session = session
        self.rows: list[int] = []

    def run(self, names, feeds):
        (batch,) = feeds.values()
        self.rows.append(batch.shape[0])
        return self.session.run(names, feeds)

    def __getattr__(self, name):
        return getattr(self.session, name)


def test_padded_batches_run_one_shape_and_give_the_unpadded_results(session_info, sample_images) -> None:
    """pad_to (on by default on a GPU, where each new batch size costs cuDNN 0.2-0.9 s): every model
    run has exactly pad_to rows, batches larger than that run in chunks, and the results are those of
    the unpadded model, row for row."""
    from dataclasses import replace

    recorder = ShapeRecorder(session_info.session)
    padded = Embedder(replace(session_info, session=recorder), pad_to=4)
    plain = Embedder(session_info)
    images = [sample_images[n] for n in ("chelsea", "coffee", "rocket", "astronaut", "retina", "chelsea__crop")]
    for n in (1, 3, 4, 6):
        recorder.rows.clear()
        got, want = padded.embed(images[:n]), plain.embed(images[:n])
        assert got.shape == (n, 1280)
        assert np.allclose(got, want, atol=1e-5)
        assert set(recorder.rows) == {4} and len(recorder.rows) == -(-n // 4)
    recorder.rows.clear()
    emb, logits = padded.embed_with_logits(images[:2])
    assert emb.shape == (2, 1280) and logits.shape == (2, 1000) and recorder.rows == [4]
    assert padded.warm_up() > 0 and recorder.rows[-1] == 4
    with pytest.raises(ValueError):
        Embedder(session_info, pad_to=0)


def test_pad_batches_setting(session_info) -> None:
    from visionjobs.settings import Settings

    auto = Embedder.from_settings(Settings(batch_size=8), session_info=session_info)
    assert auto.pad_to == (8 if session_info.on_gpu else None)
    assert Embedder.from_settings(Settings(batch_size=8, pad_batches="always"), session_info=session_info).pad_to == 8
    assert Embedder.from_settings(Settings(batch_size=8, pad_batches="never"), session_info=session_info).pad_to is None
