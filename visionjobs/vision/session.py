"""The one place that builds an onnxruntime ``InferenceSession``.

Provider choice: CUDA when onnxruntime offers it (``onnxruntime-gpu``), else CPU; an explicit
provider list from the settings overrides that. If the CUDA provider cannot be initialised the
session is rebuilt on CPU. The provider that actually runs (``session.get_providers()[0]``) is
logged and returned, so that metrics and benchmarks report the truth rather than the wish.

``InferenceSession.run`` is thread-safe, so one session can serve several worker threads.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnxruntime as ort

from visionjobs.vision.errors import ModelLoadError, ModelNotFoundError

__all__ = ["SessionInfo", "create_session", "choose_providers", "CPU", "CUDA"]

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


@dataclass(frozen=True)
class SessionInfo:
    """A ready session plus what it runs on."""

    session: ort.InferenceSession
    #: the execution provider that actually runs the graph (first of ``session.get_providers()``)
    provider: str
    model_path: Path
    #: every provider the session holds, in priority order
    providers: tuple[str, ...] = field(default=())
    #: providers asked for that onnxruntime could not honour (not installed, failed to start)
    unavailable: tuple[str, ...] = field(default=())

    @property
    def on_gpu(self) -> bool:
        return self.provider != CPU


def choose_providers(
    requested: Sequence[str] = (), available: Sequence[str] | None = None
) -> tuple[list[str], list[str]]:
    """Pick the provider list to ask onnxruntime for.

    With nothing requested: ``[CUDA, CPU]`` when CUDA is available, else ``[CPU]``. With an
    explicit list: the available ones in the given order, CPU always appended as the last
    resort. Returns ``(providers, requested_but_unavailable)``.
    """
    available = list(ort.get_available_providers() if available is None else available)
    if not requested:
        return ([CUDA, CPU] if CUDA in available else [CPU]), []
    chosen: list[str] = []
    missing: list[str] = []
    for name in requested:
        if name in available:
            if name not in chosen:
                chosen.append(name)
        else:
            missing.append(name)
    if CPU not in chosen:
        chosen.append(CPU)
    return chosen, missing


def create_session(
    model_path: str | os.PathLike[str],
    providers: Sequence[str] = (),
    intra_op_threads: int = 0,
    *,
    inter_op_threads: int = 0,
    cuda_options: Mapping[str, str] | None = None,
) -> SessionInfo:
    """Load ``model_path`` into an onnxruntime session on the best available provider.

    Args:
        model_path: the ``.onnx`` file.
        providers: explicit execution providers in priority order; empty means CUDA when
            available, else CPU.
        intra_op_threads: threads inside one operator (0: onnxruntime's default, one per core).
        inter_op_threads: threads across operators (0: default; only used in parallel mode).
        cuda_options: CUDA execution provider options (e.g. ``cudnn_conv_algo_search``), used when
            the CUDA provider is chosen.

    Raises:
        ModelNotFoundError: the file does not exist or is not a regular file (also a
            ``FileNotFoundError``).
        ModelLoadError: onnxruntime could not load the file on any provider.
    """
    path = Path(model_path).expanduser()
    if not path.is_file():
        raise ModelNotFoundError(
            f"ONNX model not found at {str(path)!r} (set VISIONJOBS_MODEL_PATH to the .onnx file)"
        )
    if intra_op_threads < 0 or inter_op_threads < 0:
        raise ValueError("thread counts must be >= 0")

    chosen, missing = choose_providers(providers)
    if missing:
        log.warning("onnxruntime providers %s are not available here (available: %s); using %s",
                    missing, ort.get_available_providers(), chosen)

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if intra_op_threads:
        options.intra_op_num_threads = intra_op_threads
    if inter_op_threads:
        options.inter_op_num_threads = inter_op_threads
    options.log_severity_level = 3  # errors only; provider fallback is reported by us below

    try:
        asked: list[Any] = [(p, dict(cuda_options)) if p == CUDA and cuda_options else p for p in chosen]
        session = ort.InferenceSession(str(path), sess_options=options, providers=asked)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises assorted pybind error types
        if chosen == [CPU]:
            raise ModelLoadError(f"onnxruntime could not load {str(path)!r}: {exc}") from exc
        log.warning("onnxruntime session with %s failed (%s); retrying on CPU only", chosen, exc)
        missing = missing + [p for p in chosen if p != CPU]
        try:
            session = ort.InferenceSession(str(path), sess_options=options, providers=[CPU])
        except Exception as exc2:  # noqa: BLE001
            raise ModelLoadError(f"onnxruntime could not load {str(path)!r}: {exc2}") from exc2

    active = tuple(session.get_providers())
    provider = active[0] if active else CPU
    if provider != chosen[0]:
        # e.g. CUDA listed but its libraries (cuDNN, ...) failed to load: ORT silently drops it
        log.warning("onnxruntime asked for %s but runs %s on %s", chosen[0], path.name, provider)
        if chosen[0] not in missing:
            missing = missing + [chosen[0]]
    log.info("onnxruntime %s: %s runs on %s (intra_op_threads=%s%s)",
             ort.__version__, path.name, provider, intra_op_threads or "default",
             f", CUDA options {dict(cuda_options)}" if provider == CUDA and cuda_options else "")
    return SessionInfo(session=session, provider=provider, model_path=path,
                       providers=active, unavailable=tuple(missing))
