"""Run worker processes the way production does (``faust -A ... worker``), for tests and tools."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from ..settings import Settings

ROLES = {
    "coordinator": "visionjobs.workers.coordinator",
    "embedding": "visionjobs.workers.embedding",
    "keypoints": "visionjobs.workers.keypoints",
    "all": "visionjobs.workers.all",
}


def isolated_env(bootstrap: str, name: str, data_dir: Path | str, **settings: object) -> dict[str, str]:
    """The environment of the workers and tools of one isolated run: its own topics (prefix
    ``name.``), consumer groups (app id prefix ``name``) and state dir; ``settings`` become
    ``VISIONJOBS_<NAME>`` variables (``None`` leaves one out)."""
    env = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap, "VISIONJOBS_BOOTSTRAP_SERVERS": bootstrap,
           "VISIONJOBS_TOPIC_PREFIX": f"{name}.", "VISIONJOBS_APP_ID_PREFIX": name,
           "VISIONJOBS_DATA_DIR": str(data_dir)}
    env.update({f"VISIONJOBS_{k.upper()}": str(v) for k, v in settings.items() if v is not None})
    return env


def settings_from_env(env: dict[str, str]) -> "Settings":
    """Settings as a worker started with ``env`` sees them (``VISIONJOBS_*`` of env win)."""
    from ..settings import Settings

    return Settings(**{k.removeprefix("VISIONJOBS_").lower(): v for k, v in env.items()
                       if k.startswith("VISIONJOBS_")})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WorkerProcess:
    """One ``faust worker`` subprocess with its own log file and web port."""

    def __init__(self, role: str, env: dict[str, str], log_dir: Path, name: Optional[str] = None,
                 log_level: str = "info") -> None:
        self.role = role
        self.name = name or role
        self.env = {**os.environ, **env}
        self.log_dir = Path(log_dir)
        self.log_level = log_level
        self.proc: Optional[subprocess.Popen] = None
        self.port: Optional[int] = None
        self.starts = 0
        self.log_path: Optional[Path] = None

    def start(self) -> "WorkerProcess":
        self.port = free_port()
        self.starts += 1
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.log_dir / f"{self.name}.{self.starts}.log"
        faust = Path(sys.executable).with_name("faust")
        cmd = [str(faust), "-A", ROLES[self.role], "worker", "-l", self.log_level,
               "--web-port", str(self.port), "--web-host", "127.0.0.1"]
        env = {**self.env, "VISIONJOBS_WEB_PORT": str(self.port), "PYTHONUNBUFFERED": "1"}
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        return self

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def wait_ready(self, timeout: float = 90.0) -> "WorkerProcess":
        """Until the worker says it is ready and has partitions assigned (or raise with its log)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_text()[-4000:]}")
            text = self.log_text()
            if "Worker: Ready" in text or "[^Worker]: Ready" in text:
                return self
            time.sleep(0.25)
        raise TimeoutError(f"{self.name} not ready after {timeout}s:\n{self.log_text()[-4000:]}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.alive():
            assert self.proc is not None
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=60)

    def stop(self, timeout: float = 30.0) -> bool:
        """Graceful stop (SIGTERM), then SIGKILL if it does not leave in time.

        Returns True when the worker left on its own after SIGTERM (or was not running)."""
        graceful = True
        if self.alive():
            assert self.proc is not None
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                graceful = False
                self.kill()
        if getattr(self, "_log", None):
            self._log.close()
        return graceful

    def __enter__(self) -> "WorkerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
