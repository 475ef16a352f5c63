"""Loading and decoding images named by UNTRUSTED ``image_uri`` strings.

A job's ``image_uri`` comes from whoever submitted the job, so it is treated as hostile:

* local files (plain paths and ``file://`` URIs) are served only from inside the configured
  roots: the real path (all symlinks resolved) must lie inside a root, ``..`` segments are
  refused outright, only regular files are read, and the size is checked before reading and
  enforced again while reading;
* ``http://`` / ``https://`` are refused unless explicitly enabled; then the host must be in the
  allowlist (when one is configured) - redirects included - the body is streamed with a byte cap
  and the whole transfer runs under a deadline;
* every other scheme (``ftp:``, ``data:``, ``gopher:``, ...) is refused.

:func:`decode_image` then checks the image header (format allowlist, declared dimensions) before
handing the bytes to OpenCV, so that a small file declaring a gigantic canvas ("decompression
bomb") is refused without allocating it.

All failures raise :class:`ImageLoadError` / :class:`ImageDecodeError`, both :class:`ImageError`
subclasses with a machine-friendly ``reason``.
"""

from __future__ import annotations

import errno
import http.client
import os
import re
import socket
import stat
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from visionjobs.vision.errors import ImageDecodeError, ImageError, ImageLoadError

if TYPE_CHECKING:  # pragma: no cover
    from visionjobs.settings import Settings

__all__ = [
    "ImageError",
    "ImageLoadError",
    "ImageDecodeError",
    "ImageLoader",
    "ImageHeader",
    "probe_image",
    "decode_image",
    "SUPPORTED_FORMATS",
]

#: Longest URI we look at at all.
MAX_URI_LENGTH = 4096
#: Formats :func:`decode_image` accepts (checked from the magic bytes, not the file name).
SUPPORTED_FORMATS: tuple[str, ...] = ("jpeg", "png", "webp", "bmp", "gif")

_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
_CONTROL_OR_SPACE_RE = re.compile(r"[\x00-\x20\x7f]")
_READ_CHUNK = 64 * 1024
_USER_AGENT = "visionjobs-image-loader/1"


def _short(text: str, limit: int = 160) -> str:
    """Clip untrusted text before it goes into an error message or a log line."""
    text = text.encode("unicode_escape").decode("ascii")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _redact_url(url: str) -> str:
    """``scheme://host[:port]/path`` without credentials, query or fragment, clipped."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return _short(url, 80)
    return _short(f"{parts.scheme}://{host}{port}{parts.path}", 120)


class ImageLoader:
    """Fetches the bytes behind an untrusted image URI, within configured limits.

    Args:
        roots: directories local images may be read from. A plain relative path is looked up
            under each root in order. With no roots, every local load is refused.
        allow_http: whether ``http://`` and ``https://`` URIs may be fetched at all.
        allowed_hosts: when non-empty, the only hosts HTTP(S) loads (and their redirects) may
            reach. An entry matches the host exactly (case-insensitive); an entry starting with
            ``.`` (``.example.com``) also matches every subdomain. With an empty allowlist and
            ``allow_http`` any host is reachable - including internal addresses - so production
            deployments that enable HTTP should set an allowlist.
        max_bytes: largest image (file or HTTP body) accepted, in bytes.
        timeout_s: deadline for one HTTP(S) load, redirects and body included. (Name
            resolution runs in the system resolver and is not covered by the deadline.)
        max_redirects: most HTTP redirects followed.

    Instances hold no mutable state after construction and are safe to share between threads.
    """

    def __init__(
        self,
        roots: Iterable[str | os.PathLike[str]] = (),
        allow_http: bool = False,
        allowed_hosts: Iterable[str] = (),
        max_bytes: int = 20 * 1024 * 1024,
        timeout_s: float = 10.0,
        *,
        max_redirects: int = 3,
    ) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        if max_redirects < 0:
            raise ValueError("max_redirects must be >= 0")
        # realpath: a root that is itself a symlink is resolved once, here, so that the
        # containment check compares real paths with real paths.
        self.roots: tuple[Path, ...] = tuple(
            dict.fromkeys(Path(os.path.realpath(os.fspath(r))) for r in roots)
        )
        self.allow_http = bool(allow_http)
        self.allowed_hosts: tuple[str, ...] = tuple(
            dict.fromkeys(h.strip().lower().rstrip(".") for h in allowed_hosts if h and h.strip())
        )
        self.max_bytes = int(max_bytes)
        self.timeout_s = float(timeout_s)
        self.max_redirects = int(max_redirects)

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> ImageLoader:
        """Build a loader from :class:`visionjobs.settings.Settings` (the process-wide one by default)."""
        if settings is None:
            from visionjobs.settings import get_settings

            settings = get_settings()
        return cls(
            roots=settings.image_roots,
            allow_http=settings.allow_http,
            allowed_hosts=settings.http_allowed_hosts,
            max_bytes=settings.max_image_bytes,
            timeout_s=settings.load_timeout_s,
        )

    def __repr__(self) -> str:
        return (
            f"ImageLoader(roots={[str(r) for r in self.roots]}, allow_http={self.allow_http}, "
            f"allowed_hosts={list(self.allowed_hosts)}, max_bytes={self.max_bytes}, "
            f"timeout_s={self.timeout_s})"
        )

    # ------------------------------------------------------------------ dispatch
    def load(self, uri: str) -> bytes:
        """Return the raw bytes behind ``uri``; raise :class:`ImageLoadError` if refused or failed.

        Accepted forms: a plain path (absolute, or relative to a root), ``file:///abs/path``
        (or ``file://localhost/abs/path``), and - when enabled - ``http(s)://host/...``.
        """
        if not isinstance(uri, str):
            raise ImageLoadError("invalid_uri", f"image URI must be a string, not {type(uri).__name__}")
        uri = uri.strip()
        if not uri:
            raise ImageLoadError("invalid_uri", "image URI is empty")
        if len(uri) > MAX_URI_LENGTH:
            raise ImageLoadError("invalid_uri", f"image URI longer than {MAX_URI_LENGTH} characters")
        if "\x00" in uri:
            raise ImageLoadError("invalid_uri", "image URI contains a NUL character")

        match = _SCHEME_RE.match(uri)
        scheme = match.group(1).lower() if match else ""
        if scheme and len(scheme) == 1 and os.name == "nt":  # "C:\..." is a drive, not a scheme
            scheme = ""
        if not scheme:
            return self._load_local(uri, relative_ok=True)
        if scheme == "file":
            return self._load_local(self._file_uri_path(uri), relative_ok=False)
        if scheme in ("http", "https"):
            return self._load_http(uri)
        raise ImageLoadError("scheme_not_allowed", f"URI scheme {_short(scheme, 20)!r} is not allowed")

    # ------------------------------------------------------------------ local files
    @staticmethod
    def _file_uri_path(uri: str) -> str:
        try:
            parts = urllib.parse.urlsplit(uri)
        except ValueError as exc:
            raise ImageLoadError("invalid_uri", f"malformed file URI: {exc}") from None
        if parts.netloc not in ("", "localhost"):
            raise ImageLoadError("invalid_uri", "file URIs must not name a remote host")
        if parts.query or parts.fragment or uri.endswith(("?", "#")):
            raise ImageLoadError("invalid_uri", "file URIs must not carry a query or fragment")
        try:
            path = urllib.parse.unquote(parts.path, errors="strict")
        except UnicodeDecodeError:
            raise ImageLoadError("invalid_uri", "file URI path is not valid UTF-8") from None
        if "\x00" in path:
            raise ImageLoadError("invalid_uri", "file URI path contains a NUL character")
        if not path.startswith("/"):
            raise ImageLoadError("invalid_uri", "file URIs must hold an absolute path")
        return path

    def _inside_roots(self, real: str | os.PathLike[str]) -> bool:
        path = Path(real)
        return any(path == root or path.is_relative_to(root) for root in self.roots)

    def _load_local(self, raw_path: str, *, relative_ok: bool) -> bytes:
        if not self.roots:
            raise ImageLoadError("outside_roots", "no image roots are configured; local files are disabled")
        path = Path(raw_path)
        if ".." in path.parts or ".." in raw_path.replace("\\", "/").split("/"):
            raise ImageLoadError("outside_roots", f"path traversal ('..') is not allowed: {_short(raw_path)}")
        if path.is_absolute():
            candidates = [path]
        elif relative_ok:
            candidates = [root / path for root in self.roots]
        else:  # pragma: no cover - _file_uri_path guarantees absolute paths
            raise ImageLoadError("invalid_uri", "path must be absolute")

        first_error: ImageLoadError | None = None
        for candidate in candidates:
            real = os.path.realpath(candidate)
            if not self._inside_roots(real):
                err = ImageLoadError("outside_roots", f"{_short(raw_path)} resolves outside the image roots")
            else:
                try:
                    return self._read_file(real, raw_path)
                except ImageLoadError as exc:
                    if exc.reason != "not_found":
                        raise
                    err = exc
            first_error = first_error or err
            if err.reason == "outside_roots":
                raise err
        assert first_error is not None
        raise first_error

    def _read_file(self, real: str, shown: str) -> bytes:
        # O_NOFOLLOW: the last component cannot have been swapped for a symlink since realpath();
        # O_NONBLOCK: opening a FIFO must not hang the worker (it is refused after fstat anyway).
        flags = os.O_RDONLY
        for name in ("O_NOFOLLOW", "O_NONBLOCK", "O_CLOEXEC", "O_NOCTTY", "O_BINARY"):
            flags |= getattr(os, name, 0)
        try:
            fd = os.open(real, flags)
        except FileNotFoundError:
            raise ImageLoadError("not_found", f"no such file: {_short(shown)}") from None
        except PermissionError:
            raise ImageLoadError("permission_denied", f"cannot read {_short(shown)}") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # a symlink appeared after the check
                raise ImageLoadError("outside_roots", f"{_short(shown)} is a symlink") from None
            if exc.errno in (errno.ENOTDIR, errno.ENAMETOOLONG):
                raise ImageLoadError("not_found", f"no such file: {_short(shown)}") from None
            raise ImageLoadError("read_error", f"cannot open {_short(shown)}: {exc.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ImageLoadError("not_a_file", f"{_short(shown)} is not a regular file")
            # Re-check what was actually opened: an intermediate directory could have been
            # replaced by a symlink between realpath() and open().
            opened = _fd_path(fd)
            if opened is not None and not self._inside_roots(opened):
                raise ImageLoadError("outside_roots", f"{_short(shown)} resolves outside the image roots")
            if st.st_size > self.max_bytes:
                raise ImageLoadError(
                    "too_large", f"file is {st.st_size} bytes, more than the limit of {self.max_bytes}"
                )
            chunks: list[bytes] = []
            total = 0
            while total <= self.max_bytes:
                chunk = os.read(fd, min(_READ_CHUNK, self.max_bytes + 1 - total))
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
            if total > self.max_bytes:  # the file grew after fstat
                raise ImageLoadError("too_large", f"file is larger than the limit of {self.max_bytes} bytes")
            return b"".join(chunks)
        except OSError as exc:
            raise ImageLoadError("read_error", f"cannot read {_short(shown)}: {exc.strerror}") from None
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ HTTP(S)
    def host_allowed(self, host: str) -> bool:
        """Whether ``host`` passes the allowlist (always true with an empty allowlist)."""
        if not self.allowed_hosts:
            return True
        host = host.lower().rstrip(".")
        for entry in self.allowed_hosts:
            if entry.startswith("."):
                if host.endswith(entry) or host == entry[1:]:
                    return True
            elif host == entry:
                return True
        return False

    def _check_http_url(self, url: str) -> None:
        if _CONTROL_OR_SPACE_RE.search(url):
            raise ImageLoadError("invalid_uri", "URL contains whitespace or control characters")
        try:
            parts = urllib.parse.urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError on a malformed port
        except ValueError as exc:
            raise ImageLoadError("invalid_uri", f"malformed URL: {_short(str(exc))}") from None
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise ImageLoadError("scheme_not_allowed", f"URI scheme {_short(scheme, 20)!r} is not allowed")
        host = parts.hostname
        if not host:
            raise ImageLoadError("invalid_uri", "URL has no host")
        try:
            ascii_host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise ImageLoadError("invalid_uri", f"invalid host name {_short(host, 80)!r}") from None
        if not self.host_allowed(ascii_host):
            raise ImageLoadError("host_not_allowed", f"host {_short(ascii_host, 80)!r} is not in the allowlist")
        if "@" in parts.netloc:
            raise ImageLoadError("invalid_uri", "credentials in image URLs are not supported")

    def _load_http(self, url: str) -> bytes:
        if not self.allow_http:
            raise ImageLoadError(
                "scheme_not_allowed", "http(s) image URIs are disabled (set VISIONJOBS_ALLOW_HTTP to enable)"
            )
        self._check_http_url(url)
        shown = _redact_url(url)
        deadline = time.monotonic() + self.timeout_s
        opener = urllib.request.build_opener(_GuardedRedirectHandler(self, deadline))
        request = urllib.request.Request(
            url,
            headers={"User-Agent": _USER_AGENT, "Accept": "image/*", "Accept-Encoding": "identity"},
        )
        try:
            with opener.open(request, timeout=self.timeout_s) as response:
                length = response.headers.get("Content-Length")
                if length is not None:
                    try:
                        declared = int(length)
                    except ValueError:
                        declared = -1
                    if declared > self.max_bytes:
                        raise ImageLoadError(
                            "too_large",
                            f"{shown} declares {declared} bytes, more than the limit of {self.max_bytes}",
                        )
                return self._read_http_body(response, deadline, shown)
        except ImageLoadError:
            raise
        except urllib.error.HTTPError as exc:
            exc.close()
            raise ImageLoadError("http_error", f"{shown} answered HTTP {exc.code}") from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                raise ImageLoadError("timeout", f"{shown} did not answer within {self.timeout_s:g}s") from None
            raise ImageLoadError("network_error", f"{shown}: {_short(str(exc.reason), 120)}") from None
        except TimeoutError:
            raise ImageLoadError("timeout", f"{shown} did not answer within {self.timeout_s:g}s") from None
        except (http.client.HTTPException, OSError, ValueError) as exc:
            detail = _short(f"{type(exc).__name__} {exc}", 120)
            raise ImageLoadError("network_error", f"{shown}: {detail}") from None

    def _read_http_body(self, response: Any, deadline: float, shown: str) -> bytes:
        sock = _response_socket(response)
        read = getattr(response, "read1", None) or response.read
        chunks: list[bytes] = []
        total = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ImageLoadError("timeout", f"{shown} took longer than {self.timeout_s:g}s")
            if sock is not None:
                try:
                    sock.settimeout(remaining)
                except OSError:
                    pass
            # read1: at most one recv per call, so the deadline is checked between receives even
            # when a server trickles the body byte by byte
            chunk = read(min(_READ_CHUNK, self.max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > self.max_bytes:
                raise ImageLoadError("too_large", f"{shown} sent more than the limit of {self.max_bytes} bytes")
        return b"".join(chunks)


class _GuardedRedirectHandler(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to http(s) on an allowed host, within the load's deadline."""

    def __init__(self, loader: ImageLoader, deadline: float) -> None:
        super().__init__()
        self._loader = loader
        self._deadline = deadline
        self.max_redirections = loader.max_redirects
        self.max_repeats = min(self.max_repeats, max(loader.max_redirects, 1))

    def _check_target(self, newurl: str) -> None:
        if self.max_redirections == 0:
            raise ImageLoadError("redirect_not_allowed", "redirects are not followed")
        try:
            self._loader._check_http_url(newurl)
        except ImageLoadError as exc:
            raise ImageLoadError("redirect_not_allowed", f"redirect refused: {exc.message}") from None

    def http_error_302(self, req, fp, code, msg, headers):
        # Checked before urllib's own handling, which would turn some refusals (file:, ...)
        # into a generic HTTPError.
        location = headers.get("location") or headers.get("uri")
        if location:
            try:
                self._check_target(urllib.parse.urljoin(req.full_url, location))
            except ImageLoadError:
                fp.close()
                raise
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D401 - urllib API
        self._check_target(newurl)
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise ImageLoadError("timeout", f"took longer than {self._loader.timeout_s:g}s")
        req.timeout = remaining  # urllib opens the new request with the old request's timeout
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _response_socket(response: Any) -> socket.socket | None:
    """The socket under an ``http.client.HTTPResponse``, to tighten its timeout per read."""
    raw = getattr(getattr(response, "fp", None), "raw", None)
    sock = getattr(raw, "_sock", None)
    return sock if isinstance(sock, socket.socket) else None


def _fd_path(fd: int) -> str | None:
    """Real path of an open file descriptor where the platform tells it (Linux /proc)."""
    if sys.platform.startswith("linux"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return None
        return target if target.startswith("/") else None
    return None


# ====================================================================== decoding
@dataclass(frozen=True, slots=True)
class ImageHeader:
    """What the header of an encoded image declares."""

    format: str
    width: int
    height: int
    has_alpha: bool = False

    @property
    def pixels(self) -> int:
        return self.width * self.height


_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def _bad(fmt: str, why: str) -> ImageDecodeError:
    return ImageDecodeError("bad_header", f"{fmt}: {why}")


def _jpeg_header(data: bytes) -> ImageHeader:
    n = len(data)
    i = 2
    while i < n:
        if data[i] != 0xFF:  # stray bytes between segments: libjpeg skips them too
            i += 1
            continue
        while i < n and data[i] == 0xFF:  # fill bytes
            i += 1
        if i >= n:
            break
        marker = data[i]
        i += 1
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # markers without a payload
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            break
        if i + 2 > n:
            break
        seg_len = int.from_bytes(data[i : i + 2], "big")
        if seg_len < 2:
            raise _bad("jpeg", "invalid segment length")
        if marker in _JPEG_SOF:
            if i + 7 > n:
                break
            height = int.from_bytes(data[i + 3 : i + 5], "big")
            width = int.from_bytes(data[i + 5 : i + 7], "big")
            if width == 0 or height == 0:
                raise _bad("jpeg", "zero or deferred (DNL) image dimensions")
            return ImageHeader("jpeg", width, height)
        i += seg_len
    raise _bad("jpeg", "no frame header found")


def _png_header(data: bytes) -> ImageHeader:
    if len(data) < 26 or data[12:16] != b"IHDR":
        raise _bad("png", "missing IHDR chunk")
    width = int.from_bytes(data[16:20], "big")
    height = int.from_bytes(data[20:24], "big")
    color_type = data[25]
    return ImageHeader("png", width, height, has_alpha=color_type in (4, 6))


def _gif_header(data: bytes) -> ImageHeader:
    if len(data) < 10:
        raise _bad("gif", "truncated header")
    return ImageHeader("gif", int.from_bytes(data[6:8], "little"), int.from_bytes(data[8:10], "little"))


def _bmp_header(data: bytes) -> ImageHeader:
    if len(data) < 26:
        raise _bad("bmp", "truncated header")
    dib_size = int.from_bytes(data[14:18], "little")
    if dib_size == 12:  # BITMAPCOREHEADER
        width = int.from_bytes(data[18:20], "little")
        height = int.from_bytes(data[20:22], "little")
    elif dib_size >= 40:
        width = int.from_bytes(data[18:22], "little", signed=True)
        height = abs(int.from_bytes(data[22:26], "little", signed=True))  # negative: top-down
    else:
        raise _bad("bmp", f"unknown DIB header size {dib_size}")
    return ImageHeader("bmp", width, height)


def _webp_header(data: bytes) -> ImageHeader:
    if len(data) < 30:
        raise _bad("webp", "truncated header")
    chunk = data[12:16]
    if chunk == b"VP8 ":
        if data[23:26] != b"\x9d\x01\x2a":
            raise _bad("webp", "missing VP8 start code")
        width = int.from_bytes(data[26:28], "little") & 0x3FFF
        height = int.from_bytes(data[28:30], "little") & 0x3FFF
        return ImageHeader("webp", width, height)
    if chunk == b"VP8L":
        if data[20] != 0x2F:
            raise _bad("webp", "missing VP8L signature")
        bits = int.from_bytes(data[21:25], "little")
        return ImageHeader("webp", (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, bool((bits >> 28) & 1))
    if chunk == b"VP8X":
        flags = data[20]
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return ImageHeader("webp", width, height, bool(flags & 0x10))
    raise _bad("webp", f"unknown chunk {chunk!r}")


def probe_image(data: bytes) -> ImageHeader:
    """Identify the format from the magic bytes and read the declared size from the header.

    Only :data:`SUPPORTED_FORMATS` are recognised; anything else raises
    :class:`ImageDecodeError` with reason ``unsupported_format`` (or ``empty``). A recognised but
    malformed header raises reason ``bad_header``. Nothing is decoded.
    """
    if not data:
        raise ImageDecodeError("empty", "no image data")
    head = bytes(data[:64])
    if head.startswith(b"\xff\xd8\xff"):
        header = _jpeg_header(bytes(data[: 1 << 20]))  # frame header sits in the first segments
    elif head.startswith(b"\x89PNG\r\n\x1a\n"):
        header = _png_header(head)
    elif head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        header = _webp_header(head)
    elif head[:6] in (b"GIF87a", b"GIF89a"):
        header = _gif_header(head)
    elif head[:2] == b"BM":
        header = _bmp_header(head)
    else:
        raise ImageDecodeError(
            "unsupported_format", f"not a supported image format ({', '.join(SUPPORTED_FORMATS)})"
        )
    if header.width <= 0 or header.height <= 0:
        raise _bad(header.format, f"invalid dimensions {header.width}x{header.height}")
    return header


def decode_image(data: bytes, max_pixels: int = 40_000_000) -> np.ndarray:
    """Decode untrusted image bytes into a BGR ``uint8`` array of shape ``(H, W, 3)``.

    The header is checked first (:func:`probe_image`): unsupported formats and images declaring
    more than ``max_pixels`` pixels are refused before any pixel memory is allocated. The decoded
    size is checked again afterwards. JPEG EXIF orientation is applied; 16-bit images are reduced
    to 8 bits; grey images are expanded to three channels; an alpha channel is composited onto
    white (the usual product-photo background).

    Raises:
        ImageDecodeError: reasons ``empty``, ``unsupported_format``, ``bad_header``,
            ``too_many_pixels``, ``decode_failed``.
    """
    if max_pixels <= 0:
        raise ValueError("max_pixels must be positive")
    header = probe_image(data)
    if header.pixels > max_pixels:
        raise ImageDecodeError(
            "too_many_pixels",
            f"{header.format} declares {header.width}x{header.height} = {header.pixels} pixels, "
            f"more than the limit of {max_pixels}",
        )
    buf = np.frombuffer(data, dtype=np.uint8)
    # Formats that may carry alpha are read unchanged so that transparency can be flattened onto
    # white (IMREAD_COLOR would drop alpha and leave whatever colour the transparent pixels hold).
    flags = cv2.IMREAD_UNCHANGED if header.format in ("png", "webp", "gif") else cv2.IMREAD_COLOR
    try:
        img = cv2.imdecode(buf, flags)
    except cv2.error as exc:
        raise ImageDecodeError("decode_failed", f"{header.format}: {_short(str(exc).strip(), 120)}") from None
    if img is None or img.size == 0:
        raise ImageDecodeError("decode_failed", f"{header.format}: OpenCV could not decode the data")
    if img.shape[0] * img.shape[1] > max_pixels:
        raise ImageDecodeError(
            "too_many_pixels", f"decoded {img.shape[1]}x{img.shape[0]} image exceeds {max_pixels} pixels"
        )
    return _to_bgr_u8(img)


def _to_bgr_u8(img: np.ndarray) -> np.ndarray:
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise ImageDecodeError("decode_failed", f"unsupported pixel type {img.dtype}")
    if img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 1):
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.ndim != 3:
        raise ImageDecodeError("decode_failed", f"unexpected decoded shape {img.shape}")
    channels = img.shape[2]
    if channels == 3:
        return np.ascontiguousarray(img)
    if channels == 4:
        alpha = img[:, :, 3:4].astype(np.uint16)
        bgr = img[:, :, :3].astype(np.uint16)
        out = (bgr * alpha + 255 * (255 - alpha) + 127) // 255
        return out.astype(np.uint8)
    raise ImageDecodeError("decode_failed", f"unexpected channel count {channels}")
