"""A real, local, single-node Apache Kafka (KRaft) broker, without Docker.

The jars come from Maven Central through ``mvn dependency:copy-dependencies`` (once, into a cache
shared by every checkout); the broker runs as a detached ``java ... kafka.Kafka`` process whose
state (config, data, logs, pid file) lives under one home directory.

Layout of ``home``::

    config/server.properties      regenerated on every start
    config/log4j2.properties      broker logging: logs/server.log (rolling)
    config/tools-log4j2.properties  command-line tools: WARN to stderr
    data/                         log.dirs (and the KRaft metadata log); ``wipe()`` deletes it
    logs/server.log               the broker's log4j output
    logs/kafka.out                the JVM's own stdout/stderr
    kafka.pid                     pid of the broker this home started
    broker.json                   port, controller port, version and jars of that broker
    .lock                         flock held while up/down/wipe run (concurrent callers queue)

Safety: ``down()`` only ever signals a process whose ``/proc/<pid>/cmdline`` is a ``java`` running
``kafka.Kafka`` with ``-Dvisionjobs.broker.home=<this home>``, so a stale pid file, or one that
names some other process, never kills anything else.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

DEFAULT_VERSION = "4.1.1"
# Kafka 4.1 logs through slf4j 1.7.36, so the log4j2 binding is log4j-slf4j-impl (not -slf4j2-impl).
LOG4J_VERSION = "2.24.3"
HOST = "127.0.0.1"
HOME_MARKER = "-Dvisionjobs.broker.home="
BROKER_MAIN = "kafka.Kafka"
STORAGE_TOOL = "kafka.tools.StorageTool"

# Command-line tool classes in kafka-tools-<version>.jar (checked with ``unzip -l`` for 4.1.1).
TOPIC_COMMAND = "org.apache.kafka.tools.TopicCommand"
CONSOLE_CONSUMER = "org.apache.kafka.tools.consumer.ConsoleConsumer"
CONSOLE_PRODUCER = "org.apache.kafka.tools.ConsoleProducer"
CONSUMER_GROUP_COMMAND = "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand"

BROKER_JVM_OPTS = (
    "-Xms256m",
    "-Xmx768m",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)
# Tools are short-lived: a small heap and the C1 compiler only start noticeably faster.
TOOL_JVM_OPTS = (
    "-Xmx256m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-Djava.awt.headless=true",
)

_MARKER = ".complete"


def _env_path(name: str, default: Path) -> Path:
    value = os.environ.get(name)
    return Path(value).expanduser() if value else default


def default_home() -> Path:
    return _env_path("VISIONJOBS_BROKER_HOME", Path.home() / ".cache" / "visionjobs" / "broker")


def default_port() -> int:
    return int(os.environ.get("VISIONJOBS_BROKER_PORT", "9092"))


def default_jars_dir(version: str) -> Path:
    return _env_path("VISIONJOBS_KAFKA_JARS", Path.home() / ".cache" / "visionjobs" / "kafka-jars" / version)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def random_cluster_id() -> str:
    """What ``kafka-storage.sh random-uuid`` prints: 16 random bytes, URL-safe base64, unpadded.

    Kafka's ``Uuid.randomUuid`` rejects ids whose text starts with ``-`` (they read as options).
    """
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode("ascii").rstrip("=")
        if not text.startswith("-"):
            return text


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def warm_up(bootstrap: str, timeout: float = 60.0) -> None:
    """Wait until a (possibly brand-new) broker serves consumer groups and transactions.

    A freshly formatted broker creates ``__transaction_state`` and ``__consumer_offsets`` on first
    use; Faust workers that are the first to need them hung in their first rebalance. One
    transactional producer start (InitProducerId) and one committed-offset lookup (FindCoordinator +
    OffsetFetch) create both topics and wait for their coordinators. (aiokafka, the workers' own
    client: librdkafka's admin group-offset call crashed on a broker this young.)
    """
    import asyncio  # noqa: PLC0415

    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # noqa: PLC0415

    async def warm() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id="visionjobs-broker-warm-up")
        await producer.start()
        await producer.stop()
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id="visionjobs-broker-warm-up",
                                    enable_auto_commit=False)
        await consumer.start()
        try:
            await consumer.committed(TopicPartition("visionjobs-broker-warm-up", 0))
        finally:
            await consumer.stop()

    asyncio.run(asyncio.wait_for(warm(), timeout))


def kafka_answers(bootstrap: str, timeout: float = 3.0) -> bool:
    """Whether a Kafka broker at ``bootstrap`` serves metadata (and lists at least one broker)."""
    addresses = []
    for server in (s.strip() for s in bootstrap.split(",") if s.strip()):
        host, _, port = server.rpartition(":")
        if not port.isdigit():
            addresses = []  # a form we don't parse: let the client decide
            break
        addresses.append((host.strip("[]") or HOST, int(port)))
    if addresses and not any(port_open(h, p) for h, p in addresses):
        return False  # nothing listens: skip the client and its connection-refused log lines
    from confluent_kafka.admin import AdminClient  # noqa: PLC0415 (keeps the CLI quick)

    admin = AdminClient({
        "bootstrap.servers": bootstrap,
        "socket.connection.setup.timeout.ms": max(1000, int(timeout * 1000)),
        "log_level": 0,
    })
    try:
        metadata = admin.list_topics(timeout=timeout)
    except Exception:  # KafkaException: not a Kafka broker, or not ready yet
        return False
    return bool(metadata.brokers)


def _proc_cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def pid_alive(pid: int) -> bool:
    """A process with this pid exists and is not a zombie."""
    if pid <= 0:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # "pid (comm) S ...": the state follows the last ')' (comm may contain spaces and parens).
    state = stat.rpartition(")")[2].split()[:1]
    return state != ["Z"] and state != ["X"]


def _reap(pid: int) -> None:
    """Collect the exit status if ``pid`` is our child (tests start the broker in-process)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


class BrokerError(RuntimeError):
    """The broker could not be started, or the port is taken by something that is not Kafka."""


class LocalKafka:
    """One local single-node Kafka (KRaft, broker+controller) bound to 127.0.0.1 only."""

    def __init__(
        self,
        home: Path | str | None = None,
        port: int | None = None,
        controller_port: int | None = None,
        version: str | None = None,
        jars_dir: Path | str | None = None,
        *,
        auto_create_topics: bool = False,
        overrides: Mapping[str, str] | None = None,
        say: Callable[[str], None] | None = None,
    ) -> None:
        self.home = Path(home).expanduser().resolve() if home else default_home().resolve()
        self.port = int(port) if port is not None else default_port()
        self.controller_port = int(controller_port) if controller_port is not None else self.port + 1
        self.version = version or os.environ.get("VISIONJOBS_KAFKA_VERSION", DEFAULT_VERSION)
        self.jars_dir = (Path(jars_dir).expanduser() if jars_dir else default_jars_dir(self.version)).resolve()
        self.auto_create_topics = auto_create_topics
        self.overrides = dict(overrides or {})
        self.say = say or _stderr
        self._proc: subprocess.Popen | None = None

    # ---------------------------------------------------------------- paths
    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def config_dir(self) -> Path:
        return self.home / "config"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def server_properties(self) -> Path:
        return self.config_dir / "server.properties"

    @property
    def log4j_config(self) -> Path:
        return self.config_dir / "log4j2.properties"

    @property
    def tools_log4j_config(self) -> Path:
        return self.config_dir / "tools-log4j2.properties"

    @property
    def pid_file(self) -> Path:
        return self.home / "kafka.pid"

    @property
    def state_file(self) -> Path:
        return self.home / "broker.json"

    @property
    def server_log(self) -> Path:
        return self.logs_dir / "server.log"

    @property
    def stdout_log(self) -> Path:
        return self.logs_dir / "kafka.out"

    # ---------------------------------------------------------------- jars
    def pom_xml(self) -> str:
        deps = [
            ("org.apache.kafka", "kafka_2.13", self.version),
            ("org.apache.kafka", "kafka-tools", self.version),
            ("org.apache.logging.log4j", "log4j-core", LOG4J_VERSION),
            ("org.apache.logging.log4j", "log4j-slf4j-impl", LOG4J_VERSION),
        ]
        body = "\n".join(
            f"    <dependency><groupId>{g}</groupId><artifactId>{a}</artifactId><version>{v}</version></dependency>"
            for g, a, v in deps
        )
        return (
            '<project xmlns="http://maven.apache.org/POM/4.0.0">\n'
            "  <modelVersion>4.0.0</modelVersion>\n"
            "  <groupId>visionjobs.local</groupId>\n"
            f"  <artifactId>kafka-runtime</artifactId>\n  <version>{self.version}</version>\n"
            "  <packaging>pom</packaging>\n"
            f"  <dependencies>\n{body}\n  </dependencies>\n"
            "</project>\n"
        )

    def jars_resolved(self) -> bool:
        marker = self.jars_dir / _MARKER
        if not marker.is_file():
            return False
        try:
            recorded = json.loads(marker.read_text())
        except (OSError, ValueError):
            return False
        if recorded.get("pom_sha256") != hashlib.sha256(self.pom_xml().encode()).hexdigest():
            return False
        return all((self.jars_dir / name).is_file() for name in recorded.get("jars", [])) and bool(recorded.get("jars"))

    def resolve_jars(self) -> Path:
        """The directory holding every jar of the broker and the tools; downloads them on first use.

        The marker file is written last, so an interrupted download is redone on the next call.
        Concurrent callers serialize on a lock next to the directory.
        """
        if self.jars_resolved():
            return self.jars_dir
        self.jars_dir.parent.mkdir(parents=True, exist_ok=True)
        with _flock(self.jars_dir.parent / f".{self.jars_dir.name}.lock"):
            if self.jars_resolved():  # another process finished while we waited
                return self.jars_dir
            mvn = os.environ.get("VISIONJOBS_MVN") or shutil.which("mvn")
            if not mvn:
                raise BrokerError("Maven (mvn) is needed once to download the Kafka jars: apt-get install maven")
            build = self.jars_dir / ".build"
            staging = build / "out"
            if build.exists():
                shutil.rmtree(build)  # leftovers of an interrupted run
            staging.mkdir(parents=True)
            pom = build / "pom.xml"
            pom.write_text(self.pom_xml())
            self.say(f"resolving Kafka {self.version} jars into {self.jars_dir} (Maven, once)...")
            started = time.monotonic()
            cmd = [mvn, "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
                   f"-DoutputDirectory={staging}", "-DincludeScope=runtime"]
            result = subprocess.run(cmd, cwd=build, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise BrokerError(f"mvn failed ({result.returncode}):\n{(result.stdout + result.stderr)[-4000:]}")
            jars = sorted(p.name for p in staging.glob("*.jar"))
            if f"kafka_2.13-{self.version}.jar" not in jars:
                raise BrokerError(f"mvn finished but resolved no kafka_2.13-{self.version}.jar")
            # Swap the set in: jars of an older resolution (another log4j, say) must not stay on
            # the classpath, so every top-level jar that is not in the new set goes.
            (self.jars_dir / _MARKER).unlink(missing_ok=True)
            for old in self.jars_dir.glob("*.jar"):
                if old.name not in jars:
                    old.unlink()
            for name in jars:
                os.replace(staging / name, self.jars_dir / name)
            (self.jars_dir / _MARKER).write_text(json.dumps({
                "version": self.version,
                "pom_sha256": hashlib.sha256(self.pom_xml().encode()).hexdigest(),
                "jars": jars,
                "seconds": round(time.monotonic() - started, 1),
            }, indent=1))
            shutil.rmtree(staging, ignore_errors=True)
            self.say(f"resolved {len(jars)} jars in {time.monotonic() - started:.1f}s")
        return self.jars_dir

    def java(self) -> str:
        java_home = os.environ.get("JAVA_HOME")
        if java_home and (Path(java_home) / "bin" / "java").is_file():
            return str(Path(java_home) / "bin" / "java")
        found = shutil.which("java")
        if not found:
            raise BrokerError("java (17+) is needed to run Kafka: apt-get install openjdk-17-jre-headless")
        return found

    def _classpath(self) -> str:
        return str(self.resolve_jars() / "*")  # the JVM expands the wildcard itself

    # ---------------------------------------------------------------- config
    def config(self) -> dict[str, str]:
        """The broker's settings, as written to ``server.properties``."""
        c = {
            # KRaft, one node that is both the broker and the only controller (static quorum).
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{HOST}:{self.controller_port}",
            "controller.listener.names": "CONTROLLER",
            # Loopback only: nothing outside this machine can reach the dev broker.
            "listeners": f"PLAINTEXT://{HOST}:{self.port},CONTROLLER://{HOST}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{HOST}:{self.port}",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            # One node: every internal topic with one replica; exactly-once (transactions) works.
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "10",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            # Abort transactions of dead producers soon (default 10s) so tests that kill workers go on.
            "transaction.abort.timed.out.transaction.cleanup.interval.ms": "5000",
            "transaction.remove.expired.transaction.cleanup.interval.ms": "60000",
            # Consumers of a new group start at once instead of waiting 3 s for more members.
            "group.initial.rebalance.delay.ms": "0",
            # Topics are created explicitly (``visionjobs topics create``, Faust's declare, tests) with
            # the contract's partition count; an auto-created topic would get num.partitions and
            # silently break co-partitioning, and a typo would create a topic instead of failing.
            "auto.create.topics.enable": "true" if self.auto_create_topics else "false",
            "num.partitions": "1",
            "delete.topic.enable": "true",
            # Dev-box sizes: small segments, a day or 256 MiB per partition, a small cleaner buffer.
            "log.segment.bytes": str(32 * 1024 * 1024),
            "log.retention.hours": "24",
            "log.retention.bytes": str(256 * 1024 * 1024),
            "log.retention.check.interval.ms": "60000",
            "log.cleaner.threads": "1",
            "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),
            "num.network.threads": "2",
            "num.io.threads": "4",
            "num.recovery.threads.per.data.dir": "1",
        }
        c.update(self.overrides)
        return c

    def render_server_properties(self) -> str:
        lines = ["# Written by visionjobs.broker.LocalKafka; regenerated on every start."]
        lines += [f"{key}={value}" for key, value in self.config().items()]
        return "\n".join(lines) + "\n"

    def render_log4j(self) -> str:
        logs = self.logs_dir
        return "\n".join([
            "status = warn",
            "name = visionjobs-kafka",
            "appender.file.type = RollingFile",
            "appender.file.name = FILE",
            f"appender.file.fileName = {logs / 'server.log'}",
            f"appender.file.filePattern = {logs / 'server.log'}.%i",
            "appender.file.layout.type = PatternLayout",
            "appender.file.layout.pattern = [%d] %p %m (%c)%n",
            "appender.file.policies.type = Policies",
            "appender.file.policies.size.type = SizeBasedTriggeringPolicy",
            "appender.file.policies.size.size = 20MB",
            "appender.file.strategy.type = DefaultRolloverStrategy",
            "appender.file.strategy.max = 3",
            "rootLogger.level = INFO",
            "rootLogger.appenderRef.file.ref = FILE",
            # The chatty ones: per-request, per-partition-state and client-side logging.
            "logger.request.name = kafka.request.logger",
            "logger.request.level = WARN",
            "logger.state.name = state.change.logger",
            "logger.state.level = WARN",
            "logger.clients.name = org.apache.kafka.clients",
            "logger.clients.level = WARN",
            "logger.storage.name = org.apache.kafka.storage.internals.log",
            "logger.storage.level = WARN",
            "logger.cleaner.name = kafka.log.LogCleaner",
            "logger.cleaner.level = WARN",
            "",
        ])

    @staticmethod
    def render_tools_log4j() -> str:
        return "\n".join([
            "status = warn",
            "name = visionjobs-kafka-tools",
            "appender.stderr.type = Console",
            "appender.stderr.name = STDERR",
            "appender.stderr.target = SYSTEM_ERR",
            "appender.stderr.layout.type = PatternLayout",
            "appender.stderr.layout.pattern = [%d] %p %m (%c)%n",
            "rootLogger.level = WARN",
            "rootLogger.appenderRef.stderr.ref = STDERR",
            "",
        ])

    def write_config(self) -> Path:
        """Writes ``server.properties`` and both log4j2 configs; returns the server.properties path."""
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        _write_if_changed(self.server_properties, self.render_server_properties())
        _write_if_changed(self.log4j_config, self.render_log4j())
        _write_if_changed(self.tools_log4j_config, self.render_tools_log4j())
        return self.server_properties

    def formatted(self) -> bool:
        return (self.data_dir / "meta.properties").is_file()

    # ---------------------------------------------------------------- process bookkeeping
    def _read_pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def _read_state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    def is_ours(self, pid: int) -> bool:
        """``pid`` is alive and is a ``java ... kafka.Kafka`` started by a LocalKafka with this home."""
        if not pid_alive(pid):
            return False
        args = _proc_cmdline(pid)
        if not args or os.path.basename(args[0]) != "java":
            return False
        return BROKER_MAIN in args and f"{HOME_MARKER}{self.home}" in args

    def find_pid(self) -> int | None:
        """The pid of this home's running broker: from the pid file, else by scanning ``/proc``.

        The scan only matches our home marker, so it finds a broker whose pid file was lost.
        """
        pid = self._read_pid()
        if pid is not None and self.is_ours(pid):
            return pid
        marker = f"{HOME_MARKER}{self.home}".encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                raw = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if marker in raw and self.is_ours(int(entry.name)):
                return int(entry.name)
        return None

    def _running_port(self) -> int:
        return int(self._read_state().get("port", self.port))

    # ---------------------------------------------------------------- lifecycle
    def up(self, timeout: float = 120.0) -> str:
        """Starts the broker unless it already runs; returns the bootstrap address once it answers."""
        return self._up(timeout)[0]

    def _up(self, timeout: float = 120.0) -> tuple[str, bool]:
        self.home.mkdir(parents=True, exist_ok=True)
        with _flock(self.home / ".lock"):
            pid = self.find_pid()
            if pid is not None:
                port = self._running_port()
                if port != self.port:
                    raise BrokerError(f"the broker of {self.home} already runs (pid {pid}) on port {port}, "
                                      f"not {self.port}; run `visionjobs broker down` first")
                _write_pid(self.pid_file, pid)
                self._wait_answering(pid, timeout, started_here=False)
                self.say(f"Kafka already running (pid {pid}) at {self.bootstrap}")
                return self.bootstrap, False
            self._clear_pid_files()
            if kafka_answers(self.bootstrap):
                self.say(f"a Kafka broker not started from {self.home} already answers at {self.bootstrap}; "
                         "using it (not starting another)")
                return self.bootstrap, False
            for port in (self.port, self.controller_port):
                if port_open(HOST, port):
                    raise BrokerError(f"port {HOST}:{port} is taken by something that is not a Kafka broker; "
                                      "choose another with VISIONJOBS_BROKER_PORT / --port")
            return self._start(timeout), True

    def _start(self, timeout: float) -> str:
        java = self.java()
        classpath = self._classpath()
        props = self.write_config()
        if not self.formatted():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            cluster_id = random_cluster_id()
            cmd = [java, *TOOL_JVM_OPTS, "-cp", classpath, f"-Dlog4j2.configurationFile={self.tools_log4j_config}",
                   STORAGE_TOOL, "format", "-t", cluster_id, "-c", str(props), "--ignore-formatted"]
            result = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if result.returncode != 0 or not self.formatted():
                raise BrokerError(f"formatting {self.data_dir} failed ({result.returncode}):\n"
                                  f"{(result.stdout + result.stderr)[-4000:]}")
            self.say(f"formatted {self.data_dir} (cluster id {cluster_id})")
        cmd = [
            java, *BROKER_JVM_OPTS,
            f"{HOME_MARKER}{self.home}",
            f"-Dkafka.logs.dir={self.logs_dir}",
            f"-Dlog4j2.configurationFile={self.log4j_config}",
            "-cp", classpath,
            BROKER_MAIN, str(props),
        ]
        started = time.monotonic()
        with open(self.stdout_log, "ab") as out:
            out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting Kafka {self.version}\n".encode())
            out.flush()
            self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                          cwd=self.home, start_new_session=True, close_fds=True)
        pid = self._proc.pid
        _write_pid(self.pid_file, pid)
        self.state_file.write_text(json.dumps({
            "pid": pid, "port": self.port, "controller_port": self.controller_port, "version": self.version,
            "jars": str(self.jars_dir), "started_at": time.time(),
        }, indent=1))
        self.say(f"starting Kafka {self.version} (pid {pid}) at {self.bootstrap}, home {self.home}")
        self._wait_answering(pid, timeout, started_here=True)
        self.say(f"Kafka answers at {self.bootstrap} after {time.monotonic() - started:.1f}s")
        warm_up(self.bootstrap, timeout=max(10.0, timeout - (time.monotonic() - started)))
        self.say(f"group and transaction coordinators ready after {time.monotonic() - started:.1f}s")
        return self.bootstrap

    def _wait_answering(self, pid: int, timeout: float, *, started_here: bool) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if not pid_alive(pid):
                _reap(pid)
                self._clear_pid_files()
                raise BrokerError(f"Kafka (pid {pid}) exited before it answered\n{self.log_tail(40)}")
            if kafka_answers(self.bootstrap, timeout=2.0):
                return
            if time.monotonic() > deadline:
                tail = self.log_tail(40)
                if started_here:  # leave nothing half-started behind
                    self._stop(pid, 10.0)
                    self._clear_pid_files()
                raise BrokerError(f"Kafka (pid {pid}) did not answer at {self.bootstrap} within {timeout:.0f}s\n{tail}")
            time.sleep(0.25)

    def down(self, timeout: float = 30.0) -> bool:
        """Stops this home's broker (SIGTERM, then SIGKILL after ``timeout``); True if one was stopped.

        Only a process verified through ``/proc/<pid>/cmdline`` as our ``kafka.Kafka`` is signalled;
        a stale pid file is just removed.
        """
        self.home.mkdir(parents=True, exist_ok=True)
        with _flock(self.home / ".lock"):
            recorded = self._read_pid()
            pid = self.find_pid()
            if pid is None:
                if recorded is not None:
                    self.say(f"stale pid file ({recorded} is not a Kafka broker of {self.home}); removed it")
                else:
                    self.say("no Kafka broker of this home is running")
                self._clear_pid_files()
                return False
            self._stop(pid, timeout)
            self._clear_pid_files()
            return True

    def _stop(self, pid: int, timeout: float) -> None:
        if not self.is_ours(pid):
            return
        self.say(f"stopping Kafka (pid {pid})...")
        started = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = started + timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.1)
        if pid_alive(pid) and self.is_ours(pid):
            self.say(f"Kafka (pid {pid}) still running after {timeout:.0f}s; SIGKILL")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            for _ in range(100):
                _reap(pid)
                if not pid_alive(pid):
                    break
                time.sleep(0.05)
        _reap(pid)
        if self._proc is not None and self._proc.pid == pid:
            with contextlib.suppress(Exception):
                self._proc.wait(timeout=1)
            self._proc = None
        self.say(f"stopped Kafka (pid {pid}) in {time.monotonic() - started:.1f}s")

    def _clear_pid_files(self) -> None:
        for path in (self.pid_file, self.state_file):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def wipe(self, timeout: float = 30.0) -> None:
        """Stops the broker and deletes its data (and logs): the next ``up()`` starts a new cluster."""
        self.down(timeout)
        with _flock(self.home / ".lock"):
            if self.find_pid() is not None:
                raise BrokerError("the broker is running again; not deleting its data")
            for path in (self.data_dir, self.logs_dir):
                if path.exists():
                    shutil.rmtree(path)
        self.say(f"wiped {self.data_dir} and {self.logs_dir}")

    def status(self) -> dict:
        pid = self.find_pid()
        state = self._read_state() if pid is not None else {}
        port = int(state.get("port", self.port))
        bootstrap = f"{HOST}:{port}"
        return {
            "running": pid is not None,
            "pid": pid,
            "bootstrap": bootstrap,
            "answering": kafka_answers(bootstrap, timeout=3.0),
            "version": state.get("version", self.version),
            "home": str(self.home),
            "jars": state.get("jars", str(self.jars_dir)),
            "jars_resolved": self.jars_resolved(),
            "formatted": self.formatted(),
            "port": port,
            "controller_port": int(state.get("controller_port", self.controller_port)),
            "log": str(self.server_log),
        }

    def log_tail(self, lines: int = 50) -> str:
        parts = []
        for path in (self.stdout_log, self.server_log):
            text = tail_file(path, lines)
            if text:
                parts.append(f"--- {path} (last {lines} lines) ---\n{text}")
        return "\n".join(parts) or f"(no logs under {self.logs_dir})"

    # ---------------------------------------------------------------- tools
    def tool_command(self, main_class: str, args: Sequence[str] = ()) -> list[str]:
        """The ``java`` command line that runs a Kafka tool class from the broker's classpath."""
        self.config_dir.mkdir(parents=True, exist_ok=True)
        _write_if_changed(self.tools_log4j_config, self.render_tools_log4j())
        return [self.java(), *TOOL_JVM_OPTS, f"-Dlog4j2.configurationFile={self.tools_log4j_config}",
                "-cp", self._classpath(), main_class, *args]

    def run_tool(
        self,
        main_class: str,
        args: Sequence[str] = (),
        *,
        capture: bool = False,
        input: str | None = None,  # noqa: A002 (mirrors subprocess.run)
        timeout: float | None = None,
    ) -> subprocess.CompletedProcess:
        """Runs a tool class (e.g. ``TOPIC_COMMAND``); stdin/stdout/stderr pass through unless ``capture``.

        The exit code is the tool's: ``run_tool(...).returncode``.
        """
        cmd = self.tool_command(main_class, args)
        if capture:
            return subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout, check=False)
        return subprocess.run(cmd, input=input, text=input is not None, timeout=timeout, check=False)

    def exec_tool(self, main_class: str, args: Sequence[str] = ()) -> None:
        """Replaces this process with the tool (signals, stdin/stdout and the exit code go straight through)."""
        cmd = self.tool_command(main_class, args)
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(cmd[0], cmd)


def ensure_broker(timeout: float = 120.0, kafka: LocalKafka | None = None) -> tuple[str, bool]:
    """A broker to talk to: ``(bootstrap, started_by_us)``.

    ``KAFKA_BOOTSTRAP_SERVERS`` wins when it is set and answers; otherwise the local broker
    (``LocalKafka()``, from the ``VISIONJOBS_BROKER_*`` variables) is used and started if needed.
    ``started_by_us`` is True only when this call started the process (so the caller stops it).
    """
    kafka = kafka or LocalKafka()
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if configured:
        if kafka_answers(configured, timeout=5.0):
            return configured, False
        if configured != kafka.bootstrap:
            kafka.say(f"KAFKA_BOOTSTRAP_SERVERS={configured} does not answer; using the local broker")
    return kafka._up(timeout)


# -------------------------------------------------------------------- helpers
@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_if_changed(path: Path, text: str) -> None:
    with contextlib.suppress(OSError):
        if path.read_text() == text:
            return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write_pid(path: Path, pid: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(f"{pid}\n")
    os.replace(tmp, path)


def tail_file(path: Path, lines: int) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 256 * 1024))
            data = handle.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])
