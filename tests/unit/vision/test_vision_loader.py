"""ImageLoader: untrusted image URIs (local roots, HTTP policy, limits)."""

from __future__ import annotations

import http.server
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from visionjobs.settings import REPO_DIR, Settings
from visionjobs.vision.errors import ImageDecodeError, ImageError, ImageLoadError
from visionjobs.vision.loader import ImageLoader

IMAGES_DIR = REPO_DIR / "images"

CHELSEA = IMAGES_DIR / "chelsea.jpg"


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    """An image root with one image and a sub-folder, next to an 'outside' folder."""
    r = tmp_path / "root"
    (r / "sub").mkdir(parents=True)
    (r / "cat.jpg").write_bytes(CHELSEA.read_bytes())
    (r / "sub" / "cat copy.jpg").write_bytes(CHELSEA.read_bytes())
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(b"\xff\xd8\xff secret")
    return r


@pytest.fixture()
def loader(root: Path) -> ImageLoader:
    return ImageLoader([root], max_bytes=1 << 20, timeout_s=2.0)


def reason(exc_info: pytest.ExceptionInfo) -> str:
    return exc_info.value.reason


# ---------------------------------------------------------------- accepted local loads
def test_loads_relative_absolute_and_file_uri(loader: ImageLoader, root: Path) -> None:
    data = CHELSEA.read_bytes()
    assert loader.load("cat.jpg") == data
    assert loader.load("  cat.jpg \n") == data
    assert loader.load("sub/cat copy.jpg") == data
    assert loader.load(str(root / "cat.jpg")) == data
    assert loader.load((root / "cat.jpg").as_uri()) == data
    assert loader.load((root / "sub" / "cat copy.jpg").as_uri()) == data  # percent-encoded space
    assert loader.load("file://localhost" + str(root / "cat.jpg")) == data
    assert loader.load("FILE://" + str(root / "cat.jpg")) == data


def test_relative_path_searches_roots_in_order(tmp_path: Path, root: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "only-here.jpg").write_bytes(b"other")
    multi = ImageLoader([root, other])
    assert multi.load("only-here.jpg") == b"other"
    assert multi.load("cat.jpg") == CHELSEA.read_bytes()


def test_symlink_inside_roots_is_followed(loader: ImageLoader, root: Path) -> None:
    (root / "alias.jpg").symlink_to(root / "cat.jpg")
    assert loader.load("alias.jpg") == CHELSEA.read_bytes()


def test_root_given_through_a_symlink(tmp_path: Path, root: Path) -> None:
    link = tmp_path / "root-link"
    link.symlink_to(root, target_is_directory=True)
    assert ImageLoader([link]).load(str(root / "cat.jpg")) == CHELSEA.read_bytes()
    assert ImageLoader([root]).load(str(link / "cat.jpg")) == CHELSEA.read_bytes()


def test_from_settings(root: Path) -> None:
    settings = Settings(image_roots=(root,), allow_http=True, http_allowed_hosts=("a.example",),
                        max_image_bytes=1234, load_timeout_s=3.5)
    loader = ImageLoader.from_settings(settings)
    assert loader.roots == (root.resolve(),)
    assert loader.allow_http and loader.allowed_hosts == ("a.example",)
    assert loader.max_bytes == 1234 and loader.timeout_s == 3.5
    with pytest.raises(ImageLoadError) as exc:
        loader.load("cat.jpg")
    assert reason(exc) == "too_large"


def test_default_settings_serve_the_sample_images() -> None:
    assert ImageLoader.from_settings(Settings()).load("chelsea.jpg") == CHELSEA.read_bytes()


# ---------------------------------------------------------------- refused local loads
@pytest.mark.parametrize(
    "uri",
    ["../outside/secret.jpg", "sub/../../outside/secret.jpg", "sub/../cat.jpg", "./../outside/secret.jpg",
     "sub\\..\\..\\outside\\secret.jpg"],
)
def test_traversal_is_refused(loader: ImageLoader, uri: str) -> None:
    with pytest.raises(ImageLoadError) as exc:
        loader.load(uri)
    assert reason(exc) == "outside_roots"


def test_traversal_in_file_uri_is_refused(loader: ImageLoader, root: Path) -> None:
    for uri in (f"file://{root}/../outside/secret.jpg", f"file://{root}/%2e%2e/outside/secret.jpg"):
        with pytest.raises(ImageLoadError) as exc:
            loader.load(uri)
        assert reason(exc) == "outside_roots"


def test_absolute_path_outside_roots(loader: ImageLoader, tmp_path: Path) -> None:
    for uri in (str(tmp_path / "outside" / "secret.jpg"), "/etc/passwd", "/", str(tmp_path)):
        with pytest.raises(ImageLoadError) as exc:
            loader.load(uri)
        assert reason(exc) == "outside_roots", uri


def test_file_uri_outside_roots(loader: ImageLoader, tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError) as exc:
        loader.load((tmp_path / "outside" / "secret.jpg").as_uri())
    assert reason(exc) == "outside_roots"
    with pytest.raises(ImageLoadError) as exc:
        loader.load("file:///etc/passwd")
    assert reason(exc) == "outside_roots"


def test_symlink_escaping_roots(loader: ImageLoader, root: Path, tmp_path: Path) -> None:
    (root / "escape.jpg").symlink_to(tmp_path / "outside" / "secret.jpg")
    (root / "escape-dir").symlink_to(tmp_path / "outside", target_is_directory=True)
    for uri in ("escape.jpg", str(root / "escape.jpg"), (root / "escape.jpg").as_uri(), "escape-dir/secret.jpg"):
        with pytest.raises(ImageLoadError) as exc:
            loader.load(uri)
        assert reason(exc) == "outside_roots", uri


def test_dangling_symlink_out_of_roots(loader: ImageLoader, root: Path, tmp_path: Path) -> None:
    (root / "dangling.jpg").symlink_to(tmp_path / "outside" / "missing.jpg")
    with pytest.raises(ImageLoadError) as exc:
        loader.load("dangling.jpg")
    assert reason(exc) == "outside_roots"


def test_not_found_and_not_a_file(loader: ImageLoader, root: Path) -> None:
    with pytest.raises(ImageLoadError) as exc:
        loader.load("missing.jpg")
    assert reason(exc) == "not_found"
    with pytest.raises(ImageLoadError) as exc:
        loader.load("cat.jpg/inner.jpg")
    assert reason(exc) == "not_found"
    with pytest.raises(ImageLoadError) as exc:
        loader.load("sub")
    assert reason(exc) == "not_a_file"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_is_refused_without_blocking(loader: ImageLoader, root: Path) -> None:
    os.mkfifo(root / "pipe.jpg")
    start = time.monotonic()
    with pytest.raises(ImageLoadError) as exc:
        loader.load("pipe.jpg")
    assert reason(exc) == "not_a_file"
    assert time.monotonic() - start < 1.0


def test_too_large_file(root: Path) -> None:
    size = CHELSEA.stat().st_size
    with pytest.raises(ImageLoadError) as exc:
        ImageLoader([root], max_bytes=size - 1).load("cat.jpg")
    assert reason(exc) == "too_large"
    assert ImageLoader([root], max_bytes=size).load("cat.jpg") == CHELSEA.read_bytes()


def test_no_roots_means_no_local_files(root: Path) -> None:
    with pytest.raises(ImageLoadError) as exc:
        ImageLoader([]).load(str(root / "cat.jpg"))
    assert reason(exc) == "outside_roots"


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("", "invalid_uri"),
        ("   ", "invalid_uri"),
        ("cat\x00.jpg", "invalid_uri"),
        ("x" * 5000, "invalid_uri"),
        ("file://otherhost/etc/passwd", "invalid_uri"),
        ("file:cat.jpg", "invalid_uri"),
        ("file:///cat.jpg?x=1", "invalid_uri"),
        ("ftp://example.com/cat.jpg", "scheme_not_allowed"),
        ("data:image/jpeg;base64,/9j/4AAQ", "scheme_not_allowed"),
        ("gopher://example.com/", "scheme_not_allowed"),
        ("javascript:alert(1)", "scheme_not_allowed"),
        ("s3://bucket/cat.jpg", "scheme_not_allowed"),
        ("jar:file:///x.jar!/cat.jpg", "scheme_not_allowed"),
    ],
)
def test_malformed_and_unknown_schemes(loader: ImageLoader, uri: str, expected: str) -> None:
    with pytest.raises(ImageLoadError) as exc:
        loader.load(uri)
    assert reason(exc) == expected


def test_non_string_uri(loader: ImageLoader) -> None:
    with pytest.raises(ImageLoadError) as exc:
        loader.load(b"cat.jpg")  # type: ignore[arg-type]
    assert reason(exc) == "invalid_uri"


def test_error_types_and_messages(loader: ImageLoader) -> None:
    with pytest.raises(ImageError) as exc:
        loader.load("../x.jpg")
    err = exc.value
    assert isinstance(err, ImageLoadError) and not isinstance(err, ImageDecodeError)
    assert str(err).startswith("outside_roots: ")
    assert "ImageLoadError(reason='outside_roots'" in repr(err)
    import pickle

    again = pickle.loads(pickle.dumps(err))
    assert (again.reason, again.message) == (err.reason, err.message)


# ---------------------------------------------------------------- HTTP policy (no network)
def test_http_disabled_by_default(loader: ImageLoader) -> None:
    for uri in ("http://127.0.0.1/cat.jpg", "https://example.com/cat.jpg", "HTTP://example.com/x"):
        with pytest.raises(ImageLoadError) as exc:
            loader.load(uri)
        assert reason(exc) == "scheme_not_allowed"


def test_disallowed_host(root: Path) -> None:
    loader = ImageLoader([root], allow_http=True, allowed_hosts=["images.example.com", ".cdn.example.org"])
    for uri in (
        "http://evil.example.net/cat.jpg",
        "https://images.example.com.evil.net/cat.jpg",
        "http://images.example.com@evil.net/cat.jpg",
        "http://169.254.169.254/latest/meta-data/",
        "http://example.org/cat.jpg",
    ):
        with pytest.raises(ImageLoadError) as exc:
            loader.load(uri)
        assert reason(exc) == "host_not_allowed", uri


def test_host_allowlist_matching() -> None:
    loader = ImageLoader([], allow_http=True, allowed_hosts=["Images.Example.com", ".cdn.example.org"])
    assert loader.host_allowed("images.example.com")
    assert loader.host_allowed("IMAGES.EXAMPLE.COM.")
    assert loader.host_allowed("cdn.example.org")
    assert loader.host_allowed("a.b.cdn.example.org")
    assert not loader.host_allowed("xcdn.example.org")
    assert not loader.host_allowed("example.com")
    assert ImageLoader([], allow_http=True).host_allowed("anything.example")


@pytest.mark.parametrize("uri", ["http://", "http:///cat.jpg", "http://exa mple.com/x", "http://host:99999/x",
                                 "http://host:port/x"])
def test_malformed_http_urls(uri: str) -> None:
    with pytest.raises(ImageLoadError) as exc:
        ImageLoader([], allow_http=True).load(uri)
    assert reason(exc) == "invalid_uri"


# ---------------------------------------------------------------- HTTP against a local server
class _Handler(http.server.BaseHTTPRequestHandler):
    body = CHELSEA.read_bytes()

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        path = self.path
        if path == "/cat.jpg":
            self._send(self.body)
        elif path == "/chunked":  # no Content-Length: the cap must hold while streaming
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Connection", "close")
            self.end_headers()
            try:
                for _ in range(64):
                    self.wfile.write(b"\0" * 4096)
            except OSError:  # the client stopped reading at its cap
                pass
        elif path == "/slow":
            time.sleep(1.5)
            self._send(self.body)
        elif path == "/drip":  # answers at once, then trickles the body for seconds
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            for _ in range(100):
                try:
                    self.wfile.write(b"x")
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(0.05)
        elif path.startswith("/redirect-to/"):
            self.send_response(302)
            self.send_header("Location", path[len("/redirect-to/"):].replace("PORT", str(self.server.server_port)))
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self.send_error(404)

    def _send(self, body: bytes) -> None:
        try:
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:  # the client gave up (timeout tests)
            pass


@pytest.fixture(scope="module")
def http_base():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


@pytest.fixture()
def web(monkeypatch) -> ImageLoader:
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    return ImageLoader([], allow_http=True, allowed_hosts=["127.0.0.1"], max_bytes=100_000, timeout_s=0.8)


def test_http_load(web: ImageLoader, http_base: str) -> None:
    assert web.load(f"{http_base}/cat.jpg") == CHELSEA.read_bytes()
    assert ImageLoader([], allow_http=True).load(f"{http_base}/cat.jpg") == CHELSEA.read_bytes()


def test_http_size_cap(http_base: str, web: ImageLoader) -> None:
    small = ImageLoader([], allow_http=True, max_bytes=1000, timeout_s=2)
    with pytest.raises(ImageLoadError) as exc:
        small.load(f"{http_base}/cat.jpg")  # refused from Content-Length
    assert reason(exc) == "too_large"
    with pytest.raises(ImageLoadError) as exc:
        web.load(f"{http_base}/chunked")  # refused while streaming
    assert reason(exc) == "too_large"


def test_http_timeout(web: ImageLoader, http_base: str) -> None:
    for path in ("/slow", "/drip"):
        start = time.monotonic()
        with pytest.raises(ImageLoadError) as exc:
            web.load(f"{http_base}{path}")
        assert reason(exc) == "timeout", path
        assert time.monotonic() - start < 1.4, path  # the deadline covers the whole load


def test_http_redirects_are_checked(web: ImageLoader, http_base: str) -> None:
    assert web.load(f"{http_base}/redirect-to/http://127.0.0.1:PORT/cat.jpg") == CHELSEA.read_bytes()
    for target in ("http://localhost:PORT/cat.jpg", "file:///etc/passwd", "ftp://127.0.0.1/cat.jpg"):
        with pytest.raises(ImageLoadError) as exc:
            web.load(f"{http_base}/redirect-to/{target}")
        assert reason(exc) == "redirect_not_allowed", target


def test_http_errors(web: ImageLoader, http_base: str) -> None:
    with pytest.raises(ImageLoadError) as exc:
        web.load(f"{http_base}/missing.jpg")
    assert reason(exc) == "http_error" and "404" in exc.value.message
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ImageLoadError) as exc:
        web.load(f"http://127.0.0.1:{port}/cat.jpg")
    assert reason(exc) == "network_error"


def test_http_error_messages_hide_credentials(web: ImageLoader, http_base: str) -> None:
    url = http_base.replace("http://", "http://user:s3cret@") + "/missing.jpg?token=abc"
    with pytest.raises(ImageLoadError) as exc:
        web.load(url)
    assert reason(exc) == "invalid_uri"
    assert "s3cret" not in str(exc.value) and "token" not in str(exc.value)
