"""Chaos soak: many synthetic jobs through the coordinator while it is killed and the broker restarts.

One run (``visionjobs soak``, or :func:`run_soak`):

1. starts its *own* single-node Apache Kafka (``LocalKafka`` in a temporary home, on free ports), so
   it can restart it without disturbing anybody else; or uses ``bootstrap`` (then no broker restart);
2. creates the contract's topics under a unique topic prefix and app id, and starts ``W`` coordinator
   workers (``faust -A visionjobs.workers.coordinator worker``) as :class:`WorkerProcess` es;
3. produces ``N`` synthetic jobs (:mod:`.loadgen`) from a background thread, at a rate that spreads
   the production over the chaos events;
4. meanwhile, at random moments, SIGKILLs a random coordinator worker ``K`` times (each one is
   restarted right away and waited for), and restarts the broker once in the middle (down, then up on
   the same home and port); the workers must come back into their consumer group on their own. A
   worker that exits without being killed (say, because the broker went away) is restarted and
   counted as a *worker restart*;
5. after production and the last chaos event, waits until every job has a completion per phase (or
   a timeout), lingers a little to catch late duplicates, and checks exactly-once with
   :func:`.verify.check` (read_committed);
6. always stops its workers and its broker (also on Ctrl-C / SIGTERM).

The pure parts (schedule, rate, summary, partitioner) are unit tested; the run itself is a tool,
not a CI test.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..settings import Settings
from .loadgen import JobPlan, LoadSpec
from .workers import isolated_env, settings_from_env

log = logging.getLogger(__name__)

KILL = "kill"
BROKER_RESTART = "broker_restart"
ROLE = "coordinator"


def _stderr(message: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- configuration
@dataclass
class SoakConfig:
    jobs: int = 1000
    kills: int = 5
    workers: int = 2
    broker_restart: bool = True
    rate: float = 0.0  # events/s; 0: chosen so that production spans every chaos event
    seed: int = 1
    bootstrap: Optional[str] = None  # an existing broker (no broker restart possible)
    partitions: int = 8
    max_images: int = 20
    duplicate_fraction: float = 0.2
    failure_fraction: float = 0.1
    slot_s: float = 0.0  # production seconds per chaos event when the rate is chosen here; 0: auto
    min_duration_s: float = 20.0
    min_gap_s: float = 2.0  # at least this long between one chaos event being over and the next
    broker_down_s: float = 3.0  # how long the broker stays down during its restart
    ready_timeout_s: float = 180.0
    rejoin_timeout_s: float = 180.0
    timeout_s: float = 600.0  # waiting for every completion, after production and chaos
    linger_s: float = 5.0  # reading again after the last completion, to catch late duplicates
    work_dir: Optional[Path] = None  # default: a new temporary directory
    keep: bool = False  # keep the work dir (logs) even when the run passes
    log_level: str = "info"

    def validate(self) -> None:
        if self.jobs < 1:
            raise ValueError("jobs must be >= 1")
        if self.kills < 0:
            raise ValueError("kills must be >= 0")
        if self.workers < 1:
            raise ValueError("workers must be >= 1")
        if self.rate < 0:
            raise ValueError("rate must be >= 0")
        if self.broker_restart and self.bootstrap:
            raise ValueError("--broker-restart needs the soak's own broker; it cannot restart the broker "
                             f"at {self.bootstrap} (drop --bootstrap, or pass --no-broker-restart)")

    def load_spec(self) -> LoadSpec:
        return LoadSpec(jobs=self.jobs, max_images=self.max_images, duplicate_fraction=self.duplicate_fraction,
                        failure_fraction=self.failure_fraction, seed=self.seed)


# --------------------------------------------------------------------------- pure helpers
def estimate_events(plans: Sequence[JobPlan], spec: LoadSpec) -> int:
    """Expected number of events ``produce`` sends for ``plans`` (one batch event per job, one
    result per image and phase, some of them twice)."""
    images = sum(p.total for p in plans)
    return len(plans) + round(images * len(spec.phases) * (1.0 + spec.duplicate_fraction))


def auto_slot(startup_s: float, session_timeout_s: float, min_gap_s: float, floor_s: float = 15.0) -> float:
    """Production seconds to give each chaos event: a killed worker is back (ready) after about its
    start-up time plus the session timeout (the group waits that long for the dead member), with
    room to spare so that the events stay within the production."""
    return round(max(floor_s, 1.5 * (startup_s + session_timeout_s) + min_gap_s), 1)


def production_plan(events: int, chaos_events: int, rate: float = 0.0, slot_s: float = 15.0,
                    min_duration_s: float = 20.0) -> tuple[float, float]:
    """``(rate, duration_s)`` of the production: the given rate, or one that makes production last
    ``slot_s`` per chaos event (at least ``min_duration_s``)."""
    if events <= 0:
        return (rate if rate > 0 else 1.0), 0.0
    if rate > 0:
        return rate, events / rate
    duration = max(min_duration_s, chaos_events * slot_s)
    return events / duration, duration


@dataclass(frozen=True)
class ChaosEvent:
    at_s: float  # seconds after production started
    kind: str  # KILL or BROKER_RESTART
    worker: int = -1  # index of the worker to kill (KILL only)


def chaos_schedule(kills: int, broker_restart: bool, duration_s: float, workers: int,
                   rnd: random.Random) -> list[ChaosEvent]:
    """The chaos events of a run, in time order, spread over ``duration_s``.

    The window is cut into one slot per event; each event falls at a random moment in the middle
    70% of its slot (so two events never pile up), the broker restart in the middle slot.
    """
    n = kills + (1 if broker_restart else 0)
    if n == 0:
        return []
    slot = max(duration_s, 0.0) / n
    restart_slot = n // 2 if broker_restart else -1
    events = []
    for i in range(n):
        at = slot * i + slot * rnd.uniform(0.15, 0.85)
        if i == restart_slot:
            events.append(ChaosEvent(round(at, 3), BROKER_RESTART))
        else:
            events.append(ChaosEvent(round(at, 3), KILL, rnd.randrange(workers)))
    return events


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 hash (``org.apache.kafka.common.utils.Utils.murmur2``), as an unsigned int."""
    m, r = 0x5BD1E995, 24
    length = len(data)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    for i in range(0, length - length % 4, 4):
        k = data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24)
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    tail = length & ~3
    rest = length % 4
    if rest == 3:
        h ^= data[tail + 2] << 16
    if rest >= 2:
        h ^= data[tail + 1] << 8
    if rest >= 1:
        h ^= data[tail]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


def partition_for(key: str | bytes, partitions: int) -> int:
    """The partition Java's default partitioner (and librdkafka's ``murmur2_random``) picks for a key."""
    data = key.encode() if isinstance(key, str) else key
    return (murmur2(data) & 0x7FFFFFFF) % partitions


_LOG_LEVEL = re.compile(r"\[(ERROR|WARNING|WARN|CRITICAL)\]")


def scan_log(text: str, max_lines: int = 20) -> dict[str, Any]:
    """Counts of ERROR/WARNING/CRITICAL lines of a worker log, and the first distinct ones."""
    counts: dict[str, int] = {}
    first: list[str] = []
    seen: set[str] = set()
    for line in text.splitlines():
        match = _LOG_LEVEL.search(line)
        if not match:
            continue
        level = "WARNING" if match.group(1) == "WARN" else match.group(1)
        counts[level] = counts.get(level, 0) + 1
        # the same message from another time stamp / pid is not news
        message = line[match.end():].strip()[:300]
        if message not in seen and len(first) < max_lines:
            seen.add(message)
            first.append(line.strip()[:400])
    return {"counts": counts, "first": first}


# --------------------------------------------------------------------------- the outcome
@dataclass
class SoakResult:
    jobs: int = 0
    phases: int = 2
    events: int = 0
    planned_events: int = 0  # the estimate the rate was chosen for
    slot_s: float = 0.0  # production seconds per chaos event
    completions: int = 0
    duplicates: int = 0
    missing: int = 0
    wrong_counts: int = 0
    unexpected: int = 0
    kills_planned: int = 0
    kills: int = 0
    broker_restarts_planned: int = 0
    broker_restarts: int = 0
    worker_restarts: int = 0
    workers: int = 0
    seed: int = 0
    rate: float = 0.0
    bootstrap: str = ""
    own_broker: bool = True
    production_s: float = 0.0
    settle_s: float = 0.0  # from the end of production and chaos until every completion was there
    elapsed_s: float = 0.0
    reconnects: list = field(default_factory=list)  # per broker restart: seconds until workers rejoined
    worker_exits: list = field(default_factory=list)  # unexpected exits: worker, rc, when
    chaos: list = field(default_factory=list)  # what happened, in order
    statuses: dict = field(default_factory=dict)
    evidence: dict = field(default_factory=dict)
    error: Optional[str] = None
    interrupted: bool = False
    work_dir: Optional[str] = None

    @property
    def ok(self) -> bool:
        return (self.error is None and not self.interrupted and self.duplicates == 0 and self.missing == 0
                and self.wrong_counts == 0 and self.unexpected == 0 and self.jobs > 0)

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        return 0 if self.ok else 1

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        out["expected_completions"] = self.jobs * self.phases
        return out

    def timeline(self) -> list[str]:
        """One line per chaos event: when (seconds into production, events sent) and what."""
        out = []
        for e in self.chaos:
            when = f"{e.get('at_s')}s ~{e.get('at_events')}/{self.events or self.planned_events} events"
            if e["event"] == KILL:
                out.append(f"{when}: SIGKILL {e['worker']} (pid {e['pid']}), ready again after {e['ready_after_s']}s")
            elif e["event"] == BROKER_RESTART:
                rejoined = "NOT rejoined" if e.get("rejoined_s") is None else f"rejoined after {e['rejoined_s']}s"
                out.append(f"{when}: broker restart, up after {e['broker_up_after_s']}s, workers {rejoined}")
            else:
                out.append(f"{e.get('at_s')}s: {e['worker']} exited on its own (rc {e['rc']}), restarted"
                           + (f", {e['s_after_broker_restart']}s after the broker restart"
                              if e.get("s_after_broker_restart") is not None else ""))
        return out

    def format(self) -> str:
        verdict = "PASSED" if self.ok else ("INTERRUPTED" if self.interrupted else "FAILED")
        rejoin = ", ".join(f"{r['rejoined_s']:.1f}s" if r.get("rejoined_s") is not None else "NOT rejoined"
                           for r in self.reconnects)
        lines = [
            f"soak {verdict}",
            f"  jobs             {self.jobs}",
            f"  events produced  {self.events} in {self.production_s:.1f}s ({self.rate:.0f}/s target)",
            f"  completions      {self.completions} (expected {self.jobs * self.phases})",
            f"  duplicates       {self.duplicates}",
            f"  missing          {self.missing}",
            f"  wrong counts     {self.wrong_counts}",
            f"  kills            {self.kills}/{self.kills_planned} (SIGKILL, {self.workers} coordinator workers)",
            f"  broker restarts  {self.broker_restarts}/{self.broker_restarts_planned}"
            + (f" (workers back in their group after {rejoin})" if rejoin else ""),
            f"  worker restarts  {self.worker_restarts} (workers that exited on their own and were restarted)",
            f"  elapsed          {self.elapsed_s:.1f}s (settle after production/chaos {self.settle_s:.1f}s)",
            *(f"  chaos            {line}" for line in self.timeline()),
            f"  seed             {self.seed}",
        ]
        if self.unexpected:
            lines.append(f"  unexpected       {self.unexpected}")
        for exit_ in self.worker_exits:
            lines.append(f"  worker exit      {exit_}")
        if self.error:
            lines.append(f"  error            {self.error}")
        if self.work_dir:
            lines.append(f"  logs             {self.work_dir}")
        return "\n".join(lines)


# --------------------------------------------------------------------------- the run
class Interrupted(Exception):
    """The run was asked to stop (Ctrl-C, SIGTERM)."""


class Soak:
    """One soak run. ``run()`` returns a :class:`SoakResult` and always cleans up after itself."""

    def __init__(self, config: SoakConfig, say: Callable[[str], None] = _stderr) -> None:
        config.validate()
        self.cfg = config
        self.say = say
        self.rnd = random.Random(config.seed)
        self.result = SoakResult(jobs=config.jobs, workers=config.workers, seed=config.seed,
                                 kills_planned=config.kills, own_broker=config.bootstrap is None,
                                 broker_restarts_planned=1 if config.broker_restart else 0)
        self.kafka: Any = None
        self.workers: list[Any] = []
        self.env: dict[str, str] = {}
        self.settings: Optional[Settings] = None
        self.work_dir: Optional[Path] = None
        self.stop_event = threading.Event()
        self.producer_errors: list[BaseException] = []
        self.producer_thread: Optional[threading.Thread] = None
        self.produced = 0
        self.last_broker_restart: Optional[float] = None
        self.production_started: Optional[float] = None
        self.rate = 0.0
        self.broker_down = False  # while True, a dead worker is restarted only once the broker is back
        self.run_id = uuid.uuid4().hex[:8]

    # ---------------------------------------------------------------- entry point
    def run(self) -> SoakResult:
        started = time.monotonic()
        try:
            self._run()
        except (KeyboardInterrupt, Interrupted):
            self.result.interrupted = True
            self.result.error = "interrupted"
            self.say("interrupted; cleaning up")
        except Exception as exc:  # noqa: BLE001 - reported in the result, cleanup below
            self.result.error = f"{type(exc).__name__}: {exc}"
            self.say(f"error: {self.result.error}")
            log.debug("soak failed", exc_info=True)
        finally:
            self.result.elapsed_s = round(time.monotonic() - started, 1)
            self._cleanup()
        return self.result

    def _run(self) -> None:
        from ..admin import create_topics
        from .loadgen import plan_jobs
        from .workers import WorkerProcess, free_port

        cfg = self.cfg
        self.work_dir = Path(cfg.work_dir) if cfg.work_dir else Path(tempfile.mkdtemp(prefix=f"visionjobs-soak-{self.run_id}-"))
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.result.work_dir = str(self.work_dir)
        self._log_file = open(self.work_dir / "soak.log", "a")  # librdkafka and our own notes

        if cfg.bootstrap:
            bootstrap = cfg.bootstrap
        else:
            from ..broker import LocalKafka

            port = free_port()
            controller_port = free_port()
            while controller_port == port:
                controller_port = free_port()
            self.kafka = LocalKafka(home=self.work_dir / "broker", port=port, controller_port=controller_port,
                                    say=self.say)
            bootstrap = self.kafka.up()
        self.result.bootstrap = bootstrap
        self.env = isolated_env(bootstrap, f"soak{self.run_id}", self.work_dir / "data", partitions=cfg.partitions)
        self.settings = settings = settings_from_env(self.env)
        create_topics(settings)
        self.say(f"topics created (prefix {settings.topic_prefix!r}) at {bootstrap}; work dir {self.work_dir}")

        started = time.monotonic()
        log_dir = self.work_dir / "logs"
        self.workers = [WorkerProcess(ROLE, self.env, log_dir, name=f"{ROLE}-{i}", log_level=cfg.log_level).start()
                        for i in range(cfg.workers)]
        for worker in self.workers:
            worker.wait_ready(cfg.ready_timeout_s)
        startup_s = time.monotonic() - started
        self.say(f"{cfg.workers} coordinator workers ready after {startup_s:.1f}s")
        self._wait_group(cfg.workers, cfg.rejoin_timeout_s)
        slot_s = cfg.slot_s or auto_slot(startup_s, settings.session_timeout_s, cfg.min_gap_s)

        spec = cfg.load_spec()
        plans = plan_jobs(spec, prefix=self.run_id)
        self.result.phases = len(spec.phases)
        chaos_n = cfg.kills + (1 if cfg.broker_restart else 0)
        events = estimate_events(plans, spec)
        rate, duration = production_plan(events, chaos_n, cfg.rate, slot_s, cfg.min_duration_s)
        self.result.rate = round(rate, 1)
        self.result.planned_events = events
        self.result.slot_s = slot_s
        schedule = chaos_schedule(cfg.kills, cfg.broker_restart, duration, cfg.workers, self.rnd)
        self.say(f"producing {cfg.jobs} jobs (~{events} events) at {rate:.0f} events/s (~{duration:.0f}s); "
                 f"chaos at " + ", ".join(f"{e.at_s:.0f}s {e.kind}" + (f"#{e.worker}" if e.kind == KILL else "")
                                          for e in schedule))

        self.production_started = production_started = time.monotonic()
        self.rate = rate
        self._start_producer(settings, plans, spec, rate)
        for event in schedule:
            self._sleep_until(production_started + event.at_s)
            if event.kind == KILL:
                self._kill(event.worker)
            else:
                self._restart_broker()
            chaos_over = time.monotonic() + cfg.min_gap_s
            self._sleep_until(chaos_over)  # never two events back to back
        while self.producer_thread is not None and self.producer_thread.is_alive():
            self._watch()
            self.producer_thread.join(0.5)
        if self.producer_errors:
            raise RuntimeError(f"production failed: {self.producer_errors[0]!r}")
        self.say(f"production and chaos over after {time.monotonic() - production_started:.1f}s "
                 f"({self.produced} events in {self.result.production_s:.1f}s)")

        settle_started = time.monotonic()
        report = self._wait_completions(plans, settle_started + cfg.timeout_s)
        self.result.settle_s = round(time.monotonic() - settle_started, 1)
        if not report.missing and cfg.linger_s > 0:
            self._sleep_until(time.monotonic() + cfg.linger_s)
            report = self._check(plans)
        self._record(report)
        if not self.result.ok:
            self.result.evidence = self._evidence(report)

    # ---------------------------------------------------------------- production
    def _start_producer(self, settings: Settings, plans: list[JobPlan], spec: LoadSpec, rate: float) -> None:
        from .loadgen import make_producer, produce

        rdlog = logging.getLogger("visionjobs.soak.librdkafka")
        rdlog.propagate = False
        rdlog.addHandler(logging.StreamHandler(self._log_file))
        producer = make_producer(settings, logger=rdlog)

        def progress(sent: int) -> None:
            self.produced = sent
            if self.stop_event.is_set():
                raise Interrupted("stopped")

        def target() -> None:
            began = time.monotonic()
            try:
                self.produced = produce(settings, plans, spec, rate=rate, producer=producer, progress=progress)
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                self.producer_errors.append(exc)
            finally:
                self.result.production_s = round(time.monotonic() - began, 1)
                self.result.events = self.produced

        self.producer_thread = threading.Thread(target=target, name="soak-producer", daemon=True)
        self.producer_thread.start()

    # ---------------------------------------------------------------- chaos
    def _sleep_until(self, deadline: float) -> None:
        while True:
            self._watch()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(0.25, left))

    def _watch(self) -> None:
        """Restart (and count) any worker that exited without being killed by us."""
        if self.broker_down:
            return
        for worker in self.workers:
            if worker.proc is not None and not worker.alive():
                rc = worker.proc.returncode
                since = (round(time.monotonic() - self.last_broker_restart, 1)
                         if self.last_broker_restart is not None else None)
                at_s = (round(time.monotonic() - self.production_started, 1)
                        if self.production_started is not None else None)
                note = {"worker": worker.name, "rc": rc, "log": str(worker.log_path), "at_s": at_s,
                        "s_after_broker_restart": since}
                self.say(f"{worker.name} exited on its own (rc {rc}); restarting it")
                self.result.worker_exits.append(note)
                self.result.worker_restarts += 1
                self.result.chaos.append({"event": "worker_exit", **note})
                self._restart_worker(worker)

    def _restart_worker(self, worker: Any) -> None:
        attempts = 0
        while True:
            attempts += 1
            old_log = getattr(worker, "_log", None)
            if old_log is not None:
                with contextlib.suppress(Exception):
                    old_log.close()
            worker.start()
            try:
                worker.wait_ready(self.cfg.ready_timeout_s)
                return
            except RuntimeError as exc:  # exited while starting (e.g. broker still away)
                if attempts >= 5:
                    raise
                self.say(f"{worker.name} exited while starting ({str(exc).splitlines()[0]}); again")
                self.result.worker_restarts += 1
                time.sleep(2.0)

    def _position(self) -> int:
        """About how many events were produced so far (production runs at its rate; the progress
        callback only counts every 1000)."""
        if self.production_started is None:
            return 0
        if self.producer_thread is not None and not self.producer_thread.is_alive():
            return self.produced
        by_time = int((time.monotonic() - self.production_started) * self.rate)
        return max(self.produced, min(by_time, self.result.planned_events))

    def _kill(self, index: int) -> None:
        worker = self.workers[index % len(self.workers)]
        t0 = time.monotonic()
        pid = worker.proc.pid if worker.proc else None
        at_events = self._position()
        at_s = round(t0 - self.production_started, 1) if self.production_started else None
        worker.kill(signal.SIGKILL)
        self.result.kills += 1
        self._restart_worker(worker)
        ready = round(time.monotonic() - t0, 1)
        self.say(f"kill {self.result.kills}/{self.cfg.kills}: SIGKILL {worker.name} (pid {pid}) at {at_s}s, "
                 f"~{at_events} events; ready again after {ready}s")
        self.result.chaos.append({"event": KILL, "worker": worker.name, "pid": pid, "at_s": at_s,
                                  "at_events": at_events, "ready_after_s": ready})

    def _restart_broker(self) -> None:
        assert self.kafka is not None
        t0 = time.monotonic()
        at_events = self._position()
        at_s = round(t0 - self.production_started, 1) if self.production_started else None
        self.say(f"broker restart: down (at {at_s}s, ~{at_events} events)")
        self.broker_down = True
        try:
            self.kafka.down()
            self.last_broker_restart = time.monotonic()
            self._sleep_until(time.monotonic() + self.cfg.broker_down_s)
            self.kafka.up()
        finally:
            self.broker_down = False
        self.last_broker_restart = time.monotonic()
        self.result.broker_restarts += 1
        up_after = round(time.monotonic() - t0, 1)
        self.say(f"broker up again after {up_after}s; waiting for the workers to rejoin their group")
        rejoined = self._wait_group(len(self.workers), self.cfg.rejoin_timeout_s)
        entry = {"event": BROKER_RESTART, "at_s": at_s, "at_events": at_events, "broker_up_after_s": up_after,
                 "rejoined_s": None if rejoined is None else round(rejoined, 1),
                 "workers_alive": [w.alive() for w in self.workers]}
        self.result.reconnects.append(entry)
        self.result.chaos.append(entry)
        if rejoined is None:
            self.say(f"workers did NOT rejoin within {self.cfg.rejoin_timeout_s:.0f}s of the broker restart")
        else:
            self.say(f"all {len(self.workers)} workers back in their group {rejoined:.1f}s after the broker came up")

    def _group_state(self) -> tuple[str, int]:
        from confluent_kafka.admin import AdminClient

        assert self.settings is not None
        group = f"{self.settings.app_id_prefix}-{ROLE}"
        admin = AdminClient({"bootstrap.servers": self.settings.bootstrap_servers, "log_level": 0})
        desc = admin.describe_consumer_groups([group], request_timeout=5)[group].result(timeout=10)
        state = getattr(desc.state, "name", str(desc.state))
        return state, len(desc.members)

    def _wait_group(self, members: int, timeout: float) -> Optional[float]:
        """Seconds until the coordinators' consumer group is STABLE with ``members`` members (None:
        not within ``timeout``). Workers that exit meanwhile are restarted (and counted)."""
        t0 = time.monotonic()
        last = ("?", -1)
        while time.monotonic() - t0 < timeout:
            self._watch()
            try:
                last = self._group_state()
            except Exception as exc:  # noqa: BLE001 - broker still settling
                last = (f"error {exc}", -1)
            if last[0] == "STABLE" and last[1] == members:
                return time.monotonic() - t0
            time.sleep(0.5)
        self.say(f"consumer group not stable with {members} members after {timeout:.0f}s (last: {last})")
        return None

    # ---------------------------------------------------------------- verification
    def _check(self, plans: list[JobPlan]) -> Any:
        from .verify import check, collect

        assert self.settings is not None
        return check(plans, collect(self.settings, idle_s=1.0))

    def _wait_completions(self, plans: list[JobPlan], deadline: float) -> Any:
        last_count = -1
        while True:
            self._watch()
            report = self._check(plans)
            if report.completions != last_count:
                missing = sum(len(v) for v in report.missing.values())
                self.say(f"{report.completions}/{len(plans) * self.result.phases} completions, {missing} missing")
                last_count = report.completions
            if not report.missing or time.monotonic() > deadline:
                return report
            self._sleep_until(time.monotonic() + 2.0)

    def _record(self, report: Any) -> None:
        s = report.summary()
        r = self.result
        r.completions = s["completions"]
        r.duplicates = s["duplicates"]
        r.missing = s["missing"]
        r.wrong_counts = s["wrong_counts"]
        r.unexpected = s["unexpected"]
        r.statuses = s["statuses"]

    def _evidence(self, report: Any) -> dict[str, Any]:
        """Which jobs and partitions went wrong, where their completions sit, and what the logs say."""
        from .verify import PHASE_TOPICS, read_all

        assert self.settings is not None
        n = self.settings.partitions
        ev: dict[str, Any] = {}
        with contextlib.suppress(Exception):
            wanted = {j for jobs in report.duplicates.values() for j in jobs[:50]}
            if wanted:
                from ..codec import get_codec
                from ..topics import topic_name

                codec = get_codec()
                topics = [topic_name(self.settings, t) for t in PHASE_TOPICS.values()]
                where: dict[str, list] = {}
                for msg in read_all(self.settings, topics, idle_s=1.0):
                    rec = codec.decode(msg.value(), topic=msg.topic())
                    if rec.job_id in wanted:
                        where.setdefault(rec.job_id, []).append(
                            {"topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset(),
                             "status": rec.status, "done": rec.done, "total": rec.total})
                ev["duplicate_records"] = where
        ev["duplicates"] = {ph: [{"job": j, "partition": partition_for(j, n)} for j in jobs[:50]]
                            for ph, jobs in report.duplicates.items()}
        ev["missing"] = {ph: [{"job": j, "partition": partition_for(j, n)} for j in jobs[:50]]
                         for ph, jobs in report.missing.items()}
        ev["missing_by_partition"] = {ph: _count(partition_for(j, n) for j in jobs)
                                      for ph, jobs in report.missing.items()}
        ev["duplicates_by_partition"] = {ph: _count(partition_for(j, n) for j in jobs)
                                         for ph, jobs in report.duplicates.items()}
        ev["wrong_counts"] = {ph: [list(map(str, x)) for x in items[:20]] for ph, items in report.wrong_counts.items()}
        logs: dict[str, Any] = {}
        if self.work_dir is not None:
            for path in sorted((self.work_dir / "logs").glob("*.log")):
                with contextlib.suppress(OSError):
                    logs[path.name] = scan_log(path.read_text(errors="replace"))
        ev["worker_logs"] = logs
        return ev

    # ---------------------------------------------------------------- cleanup
    def _cleanup(self) -> None:
        in_main = threading.current_thread() is threading.main_thread()
        previous = ({sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
                    if in_main else {})
        try:
            self.stop_event.set()
            workers, self.workers = self.workers, []
            for worker in workers:  # SIGTERM them all first, then wait: they stop in parallel
                with contextlib.suppress(Exception):
                    if worker.alive():
                        os.killpg(worker.proc.pid, signal.SIGTERM)
            for worker in workers:
                with contextlib.suppress(Exception):
                    worker.stop(timeout=30)
            if self.producer_thread is not None:
                self.producer_thread.join(5)
            if self.kafka is not None:
                with contextlib.suppress(Exception):
                    self.kafka.down()
            elif self.settings is not None:
                with contextlib.suppress(Exception):
                    self._delete_topics()
            with contextlib.suppress(Exception):
                self._log_file.close()
            if self.work_dir is not None and self.cfg.work_dir is None:
                if self.result.ok and not self.cfg.keep:
                    shutil.rmtree(self.work_dir, ignore_errors=True)
                    self.result.work_dir = None
                else:
                    with contextlib.suppress(OSError):  # the broker's data is large and of no use
                        shutil.rmtree(self.work_dir / "broker" / "data")
                    self.say(f"kept {self.work_dir} (worker logs, broker logs)")
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _delete_topics(self) -> None:
        from ..admin import delete_environment

        assert self.settings is not None
        delete_environment(self.settings)


def _count(values: Iterable[int]) -> dict[int, int]:
    out: dict[int, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return dict(sorted(out.items()))


def run_soak(config: SoakConfig, say: Callable[[str], None] = _stderr) -> SoakResult:
    return Soak(config, say=say).run()
