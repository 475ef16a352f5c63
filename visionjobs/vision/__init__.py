"""Vision inference: image loading (untrusted input), preprocessing, ONNX embedding, keypoints."""
