"""Vision inference: image loading (untrusted input), preprocessing, ONNX embedding, keypoints.

Pure library code (no Faust, no Kafka); import the modules directly so that importing this
package stays cheap (OpenCV and onnxruntime load only with the modules that need them):

* :mod:`visionjobs.vision.loader` - ``ImageLoader`` (untrusted ``image_uri`` -> bytes) and
  ``decode_image`` (bytes -> BGR uint8, with decompression-bomb checks);
* :mod:`visionjobs.vision.preprocess` - ``trim_uniform_border``, ``preprocess_batch``;
* :mod:`visionjobs.vision.session` - ``create_session``, the one place that builds an
  onnxruntime ``InferenceSession`` (CUDA when available, else CPU);
* :mod:`visionjobs.vision.embedder` - ``Embedder`` (one model run per micro-batch);
* :mod:`visionjobs.vision.keypoints` - ``KeypointExtractor`` (ORB/SIFT), ``match_score``;
* :mod:`visionjobs.vision.errors` - ``ImageError`` (``ImageLoadError``, ``ImageDecodeError``),
  ``ModelLoadError``;
* :mod:`visionjobs.vision.bench` - ``bench_direct``, in-process throughput.
"""
