"""Image embeddings from the ONNX model: preprocessing plus one onnxruntime run per micro-batch."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from visionjobs.vision.preprocess import fit_image, normalize_batch, preprocess_batch
from visionjobs.vision.session import SessionInfo, create_session

if TYPE_CHECKING:  # pragma: no cover
    from visionjobs.settings import Settings

__all__ = ["Embedder"]


class Embedder:
    """Embeds BGR ``uint8`` images with an ONNX image model.

    Each call to :meth:`embed` (or :meth:`embed_with_logits`) preprocesses the given images into
    one tensor and makes exactly one ``session.run``: one call is one micro-batch. The shipped
    model returns L2-normalised vectors, so a dot product is the cosine similarity.

    An ``Embedder`` holds no mutable state; onnxruntime sessions are safe to run from several
    threads, so one instance can serve a thread pool.

    Args:
        session_info: from :func:`visionjobs.vision.session.create_session`.
        input_name: the graph input taking ``float32 [N, 3, size, size]``.
        output_name: the graph output holding the embedding ``[N, dim]``.
        size: square input side in pixels.
        mean, std: per-channel normalisation, RGB order: ``(x - mean) / std``.
        trim: crop uniform borders (white canvas) before resizing.
        logits_name: optional classification output used by :meth:`logits` / :meth:`classify`
            (ignored when the graph has no such output).
        pad_to: run every batch with exactly this many rows (zero rows appended, their outputs
            dropped; larger batches in chunks). On CUDA each change of the batch size costs
            onnxruntime/cuDNN 0.2-0.9 s (measured on an H200, see BENCHMARKS.md) while a repeated one
            costs ~6 ms, and a worker's micro-batches have any size from 1 to batch_size; padded, a row's
            result also no longer depends on the batch it came in. None: the batch as it is (CPU, where
            a padded row costs as much as a real one).
    """

    def __init__(
        self,
        session_info: SessionInfo,
        input_name: str = "pixel_values",
        output_name: str = "embedding",
        size: int = 224,
        mean: Sequence[float] = (127.0, 127.0, 127.0),
        std: Sequence[float] = (128.0, 128.0, 128.0),
        trim: bool = True,
        *,
        logits_name: str | None = "logits",
        pad_to: int | None = None,
    ) -> None:
        if pad_to is not None and pad_to < 1:
            raise ValueError("pad_to must be >= 1")
        self.pad_to = pad_to
        self.session_info = session_info
        session = session_info.session
        inputs = {i.name: i for i in session.get_inputs()}
        outputs = {o.name: o for o in session.get_outputs()}
        if input_name not in inputs:
            raise ValueError(f"model has no input {input_name!r}; inputs: {sorted(inputs)}")
        if output_name not in outputs:
            raise ValueError(f"model has no output {output_name!r}; outputs: {sorted(outputs)}")
        shape = list(inputs[input_name].shape)
        if len(shape) != 4:
            raise ValueError(f"input {input_name!r} has shape {shape}, expected [N, 3, H, W]")
        if isinstance(shape[1], int) and shape[1] != 3:
            raise ValueError(f"input {input_name!r} takes {shape[1]} channels, expected 3")
        for side in shape[2:]:
            if isinstance(side, int) and side != size:
                raise ValueError(f"input {input_name!r} is fixed at {shape[2:]}, but size={size}")
        self.input_name = input_name
        self.output_name = output_name
        self.logits_name = logits_name if logits_name in outputs else None
        self.size = int(size)
        self.mean = tuple(float(m) for m in np.broadcast_to(np.asarray(mean, dtype=float), (3,)))
        self.std = tuple(float(s) for s in np.broadcast_to(np.asarray(std, dtype=float), (3,)))
        self.trim = bool(trim)
        out_dim = outputs[output_name].shape[-1] if outputs[output_name].shape else None
        if isinstance(out_dim, int) and out_dim > 0:
            self._dim = out_dim
        else:  # symbolic last dimension: ask the model once
            probe = np.zeros((1, 3, self.size, self.size), dtype=np.float32)
            self._dim = int(session.run([output_name], {input_name: probe})[0].shape[-1])

    @classmethod
    def from_settings(cls, settings: Settings | None = None, session_info: SessionInfo | None = None) -> Embedder:
        """Build from :class:`visionjobs.settings.Settings`, creating the session unless one is given."""
        if settings is None:
            from visionjobs.settings import get_settings

            settings = get_settings()
        if session_info is None:
            session_info = create_session(
                settings.model_path, providers=settings.ort_providers, intra_op_threads=settings.ort_intra_op_threads,
                cuda_options={"cudnn_conv_algo_search": settings.ort_cudnn_conv_algo_search},
            )
        pad = settings.pad_batches == "always" or (settings.pad_batches == "auto" and session_info.on_gpu)
        return cls(
            session_info,
            input_name=settings.model_input_name,
            output_name=settings.model_output_name,
            size=settings.model_input_size,
            mean=settings.model_mean,
            std=settings.model_std,
            trim=settings.trim_borders,
            pad_to=settings.batch_size if pad else None,
        )

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        """Length of one embedding vector."""
        return self._dim

    @property
    def provider(self) -> str:
        """The onnxruntime execution provider that runs the model."""
        return self.session_info.provider

    def __repr__(self) -> str:
        return (f"Embedder(model={self.session_info.model_path.name!r}, provider={self.provider!r}, "
                f"dim={self.dim}, size={self.size}, trim={self.trim}, pad_to={self.pad_to})")

    # ------------------------------------------------------------------ inference
    def preprocess(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """The model input tensor for ``images`` (``float32 [N, 3, size, size]``)."""
        return preprocess_batch(images, self.size, self.mean, self.std, trim=self.trim)

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """The per-image part of :meth:`preprocess` (trim, resize): ``uint8 (size, size, 3)``.

        Thread-safe and independent per image, so a worker runs it where it loads the image, in
        parallel, and hands only small arrays to :meth:`embed_prepared` on the inference thread.
        """
        return fit_image(image, self.size, self.trim)

    def embed_prepared(self, prepared: Sequence[np.ndarray]) -> np.ndarray:
        """Embeddings of images made by :meth:`prepare`; the same as :meth:`embed` of the originals."""
        if len(prepared) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.embed_preprocessed(normalize_batch(prepared, self.size, self.mean, self.std))

    def run(self, batch: np.ndarray, outputs: Sequence[str] | None = None) -> list[np.ndarray]:
        """One ``session.run`` on an already preprocessed batch."""
        names = list(outputs) if outputs is not None else [self.output_name]
        session = self.session_info.session
        n, pad = batch.shape[0], self.pad_to
        if not pad or n == pad or n == 0:
            return session.run(names, {self.input_name: batch})
        parts: list[list[np.ndarray]] = []
        for start in range(0, n, pad):
            chunk = batch[start: start + pad]
            rows = chunk.shape[0]
            if rows < pad:
                padded = np.zeros((pad, *chunk.shape[1:]), dtype=chunk.dtype)
                padded[:rows] = chunk
                chunk = padded
            parts.append([out[:rows] for out in session.run(names, {self.input_name: chunk})])
        return [np.concatenate([part[j] for part in parts]) for j in range(len(names))]

    def warm_up(self) -> float:
        """One run of the batch shape the worker will use (``pad_to`` rows, else one), so that the
        first real batch does not pay for CUDA/cuDNN set-up (1.5 s on an H200). Returns seconds."""
        started = time.perf_counter()
        self.run(np.zeros((self.pad_to or 1, 3, self.size, self.size), dtype=np.float32))
        return time.perf_counter() - started

    def embed_preprocessed(self, batch: np.ndarray) -> np.ndarray:
        """Embeddings ``float32 [N, dim]`` of a batch made by :meth:`preprocess`."""
        if batch.shape[0] == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        (emb,) = self.run(batch)
        return np.ascontiguousarray(emb, dtype=np.float32)

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Embeddings ``float32 [len(images), dim]``, row ``i`` for ``images[i]``; one model run."""
        if len(images) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.embed_preprocessed(self.preprocess(images))

    def embed_with_logits(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """``(embeddings [N, dim], logits [N, classes])`` from one model run."""
        if self.logits_name is None:
            raise RuntimeError("this model has no logits output")
        batch = self.preprocess(images)
        emb, logits = self.run(batch, [self.output_name, self.logits_name])
        return np.asarray(emb, dtype=np.float32), np.asarray(logits, dtype=np.float32)

    def logits(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Classifier logits ``float32 [N, classes]`` (ImageNet-1k for the shipped model)."""
        if self.logits_name is None:
            raise RuntimeError("this model has no logits output")
        (logits,) = self.run(self.preprocess(images), [self.logits_name])
        return np.asarray(logits, dtype=np.float32)

    def classify(self, images: Sequence[np.ndarray], top_k: int = 5) -> list[list[tuple[int, float]]]:
        """Top-``k`` ``(class_id, probability)`` per image, most likely first (softmax of the logits)."""
        logits = self.logits(images).astype(np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        k = max(1, min(top_k, probs.shape[1]))
        top = np.argsort(-probs, axis=1)[:, :k]
        return [[(int(c), float(p[c])) for c in row] for row, p in zip(top, probs, strict=True)]
