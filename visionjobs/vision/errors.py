"""Error types of the vision library.

Every failure that comes from the *input* (an image URI or the bytes behind it) is an
:class:`ImageError` carrying a short, stable, machine-friendly ``reason`` code, so that callers
(the Faust agents) can put it into a result record or a metric label without parsing messages.
"""

from __future__ import annotations


class ImageError(Exception):
    """An image could not be loaded or decoded.

    ``reason`` is a short snake_case code (e.g. ``"outside_roots"``, ``"too_large"``) that is safe
    to use as a metric label; ``message`` is a human readable explanation.
    ``str(error)`` is ``"<reason>: <message>"``.
    """

    def __init__(self, reason: str, message: str | None = None) -> None:
        self.reason = reason
        self.message = message or reason.replace("_", " ")
        super().__init__(reason, self.message)

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(reason={self.reason!r}, message={self.message!r})"

    def __reduce__(self):  # keep pickling (e.g. across process pools) lossless
        return (type(self), (self.reason, self.message))


class ImageLoadError(ImageError):
    """The image URI was refused or its bytes could not be fetched.

    Reason codes: ``invalid_uri``, ``scheme_not_allowed``, ``outside_roots``, ``not_found``,
    ``not_a_file``, ``permission_denied``, ``too_large``, ``read_error``, ``host_not_allowed``,
    ``redirect_not_allowed``, ``http_error``, ``network_error``, ``timeout``.
    """


class ImageDecodeError(ImageError):
    """The bytes are not a supported, sane image.

    Reason codes: ``empty``, ``unsupported_format``, ``bad_header``, ``too_many_pixels``,
    ``decode_failed``.
    """


class ModelLoadError(RuntimeError):
    """The ONNX model could not be loaded into an onnxruntime session."""


class ModelNotFoundError(ModelLoadError, FileNotFoundError):
    """The configured model file does not exist (or is not a regular file)."""
