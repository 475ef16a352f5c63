"""create_session: provider choice and model path validation (real onnxruntime)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from visionjobs.vision.errors import ModelLoadError, ModelNotFoundError
from visionjobs.vision.session import CPU, CUDA, choose_providers, create_session

MODEL = Path(__file__).resolve().parents[3] / "visionjobs" / "models" / "efficientnet_lite0_embed.onnx"


def test_default_provider_is_the_best_available(session_info) -> None:
    expected = CUDA if CUDA in ort.get_available_providers() else CPU
    assert session_info.provider == expected
    assert session_info.providers[0] == session_info.provider
    assert session_info.session.get_providers()[0] == session_info.provider
    assert session_info.model_path == MODEL


@pytest.mark.skipif(CUDA in ort.get_available_providers(), reason="checks the CPU-only machine")
def test_cpu_here(session_info, caplog) -> None:
    assert session_info.provider == CPU and not session_info.on_gpu
    with caplog.at_level(logging.INFO, logger="visionjobs.vision.session"):
        info = create_session(MODEL, intra_op_threads=1)
    assert info.provider == CPU
    assert any("runs on CPUExecutionProvider" in r.getMessage() for r in caplog.records)


def test_choose_providers() -> None:
    assert choose_providers((), [CUDA, CPU]) == ([CUDA, CPU], [])
    assert choose_providers((), ["AzureExecutionProvider", CPU]) == ([CPU], [])
    assert choose_providers((CPU,), [CUDA, CPU]) == ([CPU], [])
    assert choose_providers((CUDA,), [CPU]) == ([CPU], [CUDA])
    assert choose_providers(("TensorrtExecutionProvider", CUDA), [CUDA, CPU]) == (
        [CUDA, CPU], ["TensorrtExecutionProvider"])


def test_explicit_unavailable_provider_falls_back_to_cpu(caplog) -> None:
    if CUDA in ort.get_available_providers():
        pytest.skip("CUDA is available here")
    with caplog.at_level(logging.WARNING, logger="visionjobs.vision.session"):
        info = create_session(MODEL, providers=(CUDA,), intra_op_threads=1)
    assert info.provider == CPU
    assert CUDA in info.unavailable
    assert any("not available" in r.getMessage() for r in caplog.records)
    out = info.session.run(None, {"pixel_values": np.zeros((1, 3, 224, 224), np.float32)})
    assert out[0].shape == (1, 1280)


def test_missing_model_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.onnx"
    with pytest.raises(ModelNotFoundError) as exc:
        create_session(missing)
    assert isinstance(exc.value, FileNotFoundError) and isinstance(exc.value, ModelLoadError)
    assert str(missing) in str(exc.value) and "VISIONJOBS_MODEL_PATH" in str(exc.value)
    with pytest.raises(ModelNotFoundError):
        create_session(tmp_path)  # a directory is not a model


def test_invalid_model_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"definitely not protobuf" * 10)
    with pytest.raises(ModelLoadError) as exc:
        create_session(bad)
    assert not isinstance(exc.value, FileNotFoundError)
    assert "bad.onnx" in str(exc.value)


def test_negative_threads_rejected() -> None:
    with pytest.raises(ValueError):
        create_session(MODEL, intra_op_threads=-1)


def test_cuda_options_reach_onnxruntime_only_for_the_cuda_provider(monkeypatch) -> None:
    """``cudnn_conv_algo_search`` (VISIONJOBS_ORT_CUDNN_CONV_ALGO_SEARCH) goes with the CUDA entry of
    the provider list; on a CPU-only choice nothing changes. (Run on a GPU by scripts/device.)"""
    asked = []
    real = ort.InferenceSession

    def spy(path, sess_options=None, providers=None):
        asked.append(providers)
        return real(path, sess_options=sess_options, providers=[CPU])

    monkeypatch.setattr(ort, "InferenceSession", spy)
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    opts = {"cudnn_conv_algo_search": "HEURISTIC"}
    create_session(MODEL, cuda_options=opts)
    create_session(MODEL, providers=(CPU,), cuda_options=opts)
    assert asked[0] == [(CUDA, opts), CPU] and asked[1] == [CPU]
