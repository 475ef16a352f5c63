"""The local Kafka manager: config, pid-file safety, jar caching, CLI, and (integration) a real broker."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from visionjobs import broker as broker_mod
from visionjobs.broker import (
    CONSOLE_CONSUMER,
    CONSUMER_GROUP_COMMAND,
    TOPIC_COMMAND,
    LocalKafka,
    ensure_broker,
    pid_alive,
    random_cluster_id,
)
from visionjobs.cli.broker import broker as broker_cli
from visionjobs.cli.broker import with_bootstrap


def free_port_pair() -> int:
    """A port p with p and p+1 both free (Kafka and its controller)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port >= 65535:
            continue
        try:
            with socket.socket() as s2:
                s2.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair")


@pytest.fixture
def kafka(tmp_path: Path) -> LocalKafka:
    messages: list[str] = []
    k = LocalKafka(home=tmp_path / "home", port=free_port_pair(), jars_dir=tmp_path / "jars", say=messages.append)
    k.messages = messages  # type: ignore[attr-defined]
    return k


def read_props(path: Path) -> dict[str, str]:
    props = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            props[key] = value
    return props


@pytest.fixture
def sleeper():
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


# ------------------------------------------------------------------ server.properties
def test_server_properties_bind_loopback_only(kafka: LocalKafka) -> None:
    props = read_props(kafka.write_config())
    assert props["listeners"] == f"PLAINTEXT://127.0.0.1:{kafka.port},CONTROLLER://127.0.0.1:{kafka.port + 1}"
    assert props["advertised.listeners"] == f"PLAINTEXT://127.0.0.1:{kafka.port}"
    assert props["controller.quorum.voters"] == f"1@127.0.0.1:{kafka.port + 1}"
    assert props["process.roles"] == "broker,controller"
    assert props["node.id"] == "1"
    text = kafka.server_properties.read_text()
    assert "0.0.0.0" not in text and "localhost" not in text
    # Every host named in a listener is loopback.
    for key in ("listeners", "advertised.listeners"):
        for listener in props[key].split(","):
            assert listener.split("://")[1].rsplit(":", 1)[0] == "127.0.0.1"


def test_server_properties_support_exactly_once_on_one_node(kafka: LocalKafka) -> None:
    props = read_props(kafka.write_config())
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["transaction.state.log.replication.factor"] == "1"
    assert props["transaction.state.log.min.isr"] == "1"
    assert props["min.insync.replicas"] == "1"
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert int(props["transaction.abort.timed.out.transaction.cleanup.interval.ms"]) <= 10_000
    assert props["auto.create.topics.enable"] == "false"
    assert props["log.dirs"] == str(kafka.home / "data")


def test_overrides_and_auto_create(tmp_path: Path) -> None:
    k = LocalKafka(home=tmp_path, port=40000, jars_dir=tmp_path / "j", auto_create_topics=True,
                   overrides={"num.partitions": "8"}, say=lambda m: None)
    props = read_props(k.write_config())
    assert props["auto.create.topics.enable"] == "true"
    assert props["num.partitions"] == "8"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:40001"


def test_log4j_configs_write_into_home(kafka: LocalKafka) -> None:
    kafka.write_config()
    server = kafka.log4j_config.read_text()
    assert f"fileName = {kafka.home / 'logs' / 'server.log'}" in server
    assert "rootLogger.level = INFO" in server
    assert "SYSTEM_ERR" in kafka.tools_log4j_config.read_text()


def test_env_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VISIONJOBS_BROKER_HOME", str(tmp_path / "h"))
    monkeypatch.setenv("VISIONJOBS_BROKER_PORT", "19555")
    monkeypatch.setenv("VISIONJOBS_KAFKA_JARS", str(tmp_path / "jars"))
    k = LocalKafka()
    assert k.home == (tmp_path / "h").resolve()
    assert (k.port, k.controller_port, k.bootstrap) == (19555, 19556, "127.0.0.1:19555")
    assert k.jars_dir == (tmp_path / "jars").resolve()
    assert k.version == "4.1.1"
    monkeypatch.delenv("VISIONJOBS_KAFKA_JARS")
    assert LocalKafka(version="4.0.0").jars_dir.parts[-2:] == ("kafka-jars", "4.0.0")


def test_random_cluster_id_is_kafka_shaped() -> None:
    ids = {random_cluster_id() for _ in range(200)}
    assert len(ids) == 200
    for cid in ids:
        assert len(cid) == 22 and not cid.startswith("-")
        assert set(cid) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


# ------------------------------------------------------------------ pid-file safety
def test_status_when_not_running(kafka: LocalKafka) -> None:
    info = kafka.status()
    assert info["running"] is False and info["pid"] is None and info["answering"] is False
    assert info["bootstrap"] == f"127.0.0.1:{kafka.port}"
    assert info["version"] == "4.1.1" and info["home"] == str(kafka.home)
    assert info["jars"] == str(kafka.jars_dir) and info["jars_resolved"] is False


def test_down_with_stale_pid_file_removes_it(kafka: LocalKafka) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    kafka.home.mkdir(parents=True)
    kafka.pid_file.write_text(f"{dead.pid}\n")
    assert kafka.down(timeout=1) is False
    assert not kafka.pid_file.exists()
    assert kafka.down(timeout=1) is False  # idempotent


def test_down_never_kills_a_process_that_is_not_our_broker(kafka: LocalKafka, sleeper) -> None:
    kafka.home.mkdir(parents=True)
    kafka.pid_file.write_text(f"{sleeper.pid}\n")
    assert kafka.status()["running"] is False
    assert kafka.down(timeout=1) is False
    time.sleep(0.2)
    assert sleeper.poll() is None and pid_alive(sleeper.pid)
    assert not kafka.pid_file.exists()


def test_down_checks_the_home_marker_not_just_the_class_name(kafka: LocalKafka, tmp_path: Path) -> None:
    # A process whose command line mentions kafka.Kafka (and even another home's marker) is not ours.
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                              f"-Dvisionjobs.broker.home={tmp_path / 'elsewhere'}", "kafka.Kafka"])
    try:
        kafka.home.mkdir(parents=True)
        kafka.pid_file.write_text(f"{other.pid}\n")
        assert kafka.is_ours(other.pid) is False
        assert kafka.find_pid() is None
        kafka.down(timeout=1)
        time.sleep(0.2)
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_garbage_pid_file(kafka: LocalKafka) -> None:
    kafka.home.mkdir(parents=True)
    kafka.pid_file.write_text("not a pid")
    assert kafka.status()["running"] is False
    kafka.down(timeout=1)
    assert not kafka.pid_file.exists()


def test_pid_alive_treats_zombies_as_dead() -> None:
    child = subprocess.Popen(["true"])
    deadline = time.monotonic() + 5
    while pid_alive(child.pid) and time.monotonic() < deadline:  # exited but not reaped: a zombie
        time.sleep(0.02)
    assert not pid_alive(child.pid)
    child.wait()
    assert not pid_alive(-1) and not pid_alive(0)


def test_up_refuses_a_port_taken_by_something_else(kafka: LocalKafka, monkeypatch) -> None:
    monkeypatch.setattr(LocalKafka, "_classpath", lambda self: pytest.fail("must not start Kafka"))
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", kafka.port))
        listener.listen()
        with pytest.raises(broker_mod.BrokerError, match="not a Kafka broker"):
            kafka.up(timeout=5)
    assert not kafka.pid_file.exists()


# ------------------------------------------------------------------ jar cache
def fake_mvn(tmp_path: Path) -> tuple[Path, Path]:
    """A stand-in for mvn that "downloads" two jars into -DoutputDirectory and counts its runs."""
    counter = tmp_path / "mvn-runs"
    script = tmp_path / "fake-mvn"
    script.write_text(f"""#!{sys.executable}
import sys, pathlib
out = next(a.split("=", 1)[1] for a in sys.argv if a.startswith("-DoutputDirectory="))
pathlib.Path(out, "kafka_2.13-4.1.1.jar").write_bytes(b"jar")
pathlib.Path(out, "kafka-clients-4.1.1.jar").write_bytes(b"jar")
with open({str(counter)!r}, "a") as f:
    f.write("run\\n")
""")
    script.chmod(0o755)
    return script, counter


def test_resolve_jars_once_and_redo_an_unfinished_download(tmp_path: Path, monkeypatch) -> None:
    script, counter = fake_mvn(tmp_path)
    monkeypatch.setenv("VISIONJOBS_MVN", str(script))
    k = LocalKafka(home=tmp_path / "home", port=40010, jars_dir=tmp_path / "jars", say=lambda m: None)
    (tmp_path / "jars").mkdir()
    (tmp_path / "jars" / "stale-old-1.0.jar").write_bytes(b"old")  # a previous resolution's leftover
    assert k.resolve_jars() == (tmp_path / "jars").resolve()
    assert k.jars_resolved()
    assert sorted(p.name for p in (tmp_path / "jars").glob("*.jar")) == ["kafka-clients-4.1.1.jar",
                                                                        "kafka_2.13-4.1.1.jar"]
    assert "kafka_2.13</artifactId><version>4.1.1" in (tmp_path / "jars" / ".build" / "pom.xml").read_text()
    assert "log4j-slf4j-impl" in k.pom_xml() and "slf4j2" not in k.pom_xml()
    k.resolve_jars()
    assert counter.read_text().count("run") == 1  # cached
    (tmp_path / "jars" / ".complete").unlink()  # as if the download had been interrupted
    k.resolve_jars()
    assert counter.read_text().count("run") == 2
    (tmp_path / "jars" / "kafka-clients-4.1.1.jar").unlink()  # a jar went missing
    assert not k.jars_resolved()
    k.resolve_jars()
    assert counter.read_text().count("run") == 3


def test_failed_mvn_leaves_no_marker(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("VISIONJOBS_MVN", "false")
    k = LocalKafka(home=tmp_path / "home", port=40020, jars_dir=tmp_path / "jars", say=lambda m: None)
    with pytest.raises(broker_mod.BrokerError, match="mvn failed"):
        k.resolve_jars()
    assert not k.jars_resolved()


def test_tool_classes_exist_in_the_resolved_jars() -> None:
    k = LocalKafka(say=lambda m: None)
    if not k.jars_resolved():
        pytest.skip(f"Kafka jars not resolved yet at {k.jars_dir} (`visionjobs broker jars`)")
    import zipfile

    def entries(jar: str) -> set[str]:
        with zipfile.ZipFile(k.jars_dir / jar) as z:
            return set(z.namelist())

    tools = entries(f"kafka-tools-{k.version}.jar")
    for cls in (TOPIC_COMMAND, CONSOLE_CONSUMER, broker_mod.CONSOLE_PRODUCER, CONSUMER_GROUP_COMMAND):
        assert cls.replace(".", "/") + ".class" in tools
    core = entries(f"kafka_2.13-{k.version}.jar")
    assert "kafka/Kafka.class" in core and "kafka/tools/StorageTool.class" in core
    names = {p.name for p in k.jars_dir.glob("*.jar")}
    assert "log4j-slf4j-impl-2.24.3.jar" in names and not any("slf4j2" in n for n in names)


# ------------------------------------------------------------------ CLI
def test_with_bootstrap() -> None:
    assert with_bootstrap(("--list",), "127.0.0.1:1") == ["--list", "--bootstrap-server", "127.0.0.1:1"]
    given = ["--list", "--bootstrap-server", "h:2"]
    assert with_bootstrap(given, "127.0.0.1:1") == given
    assert with_bootstrap(["--bootstrap-server=h:2"], "x") == ["--bootstrap-server=h:2"]
    assert with_bootstrap(["--bootstrap-controller", "h:3"], "x") == ["--bootstrap-controller", "h:3"]


def test_cli_status_json_and_down_when_nothing_runs(tmp_path: Path) -> None:
    port = free_port_pair()
    runner = CliRunner()
    result = runner.invoke(broker_cli, ["--home", str(tmp_path), "--port", str(port), "status"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["running"] is False and info["bootstrap"] == f"127.0.0.1:{port}"
    result = runner.invoke(broker_cli, ["--home", str(tmp_path), "--port", str(port), "status", "--check"])
    assert result.exit_code == 1
    result = runner.invoke(broker_cli, ["--home", str(tmp_path), "--port", str(port), "down"])
    assert result.exit_code == 0


def test_cli_pass_through_adds_bootstrap(tmp_path: Path, monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(LocalKafka, "exec_tool", lambda self, main, args: calls.append((main, list(args))))
    runner = CliRunner()
    base = ["--home", str(tmp_path), "--port", "40100"]
    assert runner.invoke(broker_cli, [*base, "topics", "--list"]).exit_code == 0
    assert runner.invoke(broker_cli, [*base, "topics", "--help"]).exit_code == 0  # the tool's help
    for args in (["console-consumer", "--topic", "t", "--bootstrap-server", "h:1"],
                 ["tool", "--no-bootstrap", "kafka.tools.StorageTool", "info"],
                 ["consumer-groups", "--list"]):
        assert runner.invoke(broker_cli, [*base, *args]).exit_code == 0
    assert calls == [
        (TOPIC_COMMAND, ["--list", "--bootstrap-server", "127.0.0.1:40100"]),
        (TOPIC_COMMAND, ["--help", "--bootstrap-server", "127.0.0.1:40100"]),
        (CONSOLE_CONSUMER, ["--topic", "t", "--bootstrap-server", "h:1"]),
        ("kafka.tools.StorageTool", ["info"]),
        (CONSUMER_GROUP_COMMAND, ["--list", "--bootstrap-server", "127.0.0.1:40100"]),
    ]


def test_cli_is_registered_lazily() -> None:
    from visionjobs.cli import main

    result = CliRunner().invoke(main, ["broker", "--help"])
    assert result.exit_code == 0
    for name in ("up", "down", "status", "wipe", "logs", "topics", "console-consumer", "console-producer",
                 "consumer-groups", "tool"):
        assert name in result.output


# ------------------------------------------------------------------ a real broker
@pytest.mark.integration
@pytest.mark.timeout(600)
def test_real_broker_up_is_idempotent_and_down_stops_it(tmp_path: Path, monkeypatch) -> None:
    """Uses the shared jar cache (the first run downloads ~54 MB through Maven)."""
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    kafka = LocalKafka(home=tmp_path / "broker", port=free_port_pair())
    try:
        bootstrap = kafka.up(timeout=180)
        assert bootstrap == f"127.0.0.1:{kafka.port}"
        pid = kafka.status()["pid"]
        assert pid and kafka.is_ours(pid)
        assert kafka.up(timeout=60) == bootstrap  # no second broker
        info = kafka.status()
        assert info["pid"] == pid and info["running"] and info["answering"]
        # ensure_broker finds the running one and does not claim it.
        assert ensure_broker(kafka=kafka) == (bootstrap, False)

        created = kafka.run_tool(TOPIC_COMMAND, ["--bootstrap-server", bootstrap, "--create", "--topic",
                                                 "vj-broker-test", "--partitions", "2"], capture=True, timeout=120)
        assert created.returncode == 0, created.stderr
        listed = kafka.run_tool(TOPIC_COMMAND, ["--bootstrap-server", bootstrap, "--list"], capture=True, timeout=120)
        assert listed.returncode == 0, listed.stderr
        assert "vj-broker-test" in listed.stdout.split()
        missing = kafka.run_tool(TOPIC_COMMAND, ["--bootstrap-server", bootstrap, "--describe", "--topic", "nope"],
                                 capture=True, timeout=120)
        assert missing.returncode != 0  # the tool's exit code comes through
    finally:
        stopped = kafka.down(timeout=30)
    assert stopped
    assert not pid_alive(pid)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not kafka.pid_file.exists()
    assert kafka.status()["running"] is False
    assert kafka.down() is False  # idempotent
