"""``make test``: start a real broker (unless one is configured), run every test, stop what we started.

Usage: ``python -m visionjobs.testing.run_tests [pytest args...]`` (default: the whole ``tests/`` tree).
Exit status is pytest's, except that "no tests collected" counts as a failure.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time


def main(argv: list[str] | None = None) -> int:
    from visionjobs.broker import LocalKafka, ensure_broker

    args = list(sys.argv[1:] if argv is None else argv) or ["tests"]
    kafka = LocalKafka()
    started_at = time.monotonic()
    bootstrap, started = ensure_broker()
    print(f"[run_tests] broker {bootstrap} ({'started' if started else 'already running'}) "
          f"in {time.monotonic() - started_at:.1f}s", flush=True)
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap}
    try:
        rc = subprocess.call([sys.executable, "-m", "pytest", *args], env=env)
    finally:
        if started:
            kafka.down()
            print("[run_tests] broker stopped", flush=True)
    if rc == 5:
        print("[run_tests] no tests were collected: failing", flush=True)
        return 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
