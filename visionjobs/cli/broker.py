"""``visionjobs broker``: a local Apache Kafka (KRaft, 127.0.0.1 only) without Docker.

    visionjobs broker up                 # idempotent; prints the bootstrap address
    visionjobs broker status             # JSON
    visionjobs broker topics --list      # any kafka-topics.sh arguments
    visionjobs broker console-consumer --topic t --from-beginning
    visionjobs broker down
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from visionjobs.broker import (
    CONSOLE_CONSUMER,
    CONSOLE_PRODUCER,
    CONSUMER_GROUP_COMMAND,
    TOPIC_COMMAND,
    BrokerError,
    LocalKafka,
    tail_file,
)

PASS_THROUGH = {"ignore_unknown_options": True, "allow_interspersed_args": False}


def with_bootstrap(args: tuple[str, ...] | list[str], bootstrap: str) -> list[str]:
    """``args`` plus ``--bootstrap-server <bootstrap>`` unless they already name a server or controller."""
    args = list(args)
    for arg in args:
        if arg in ("--bootstrap-server", "--bootstrap-controller") or arg.startswith(
            ("--bootstrap-server=", "--bootstrap-controller=")
        ):
            return args
    return [*args, "--bootstrap-server", bootstrap]


def _kafka(ctx: click.Context) -> LocalKafka:
    return ctx.find_object(LocalKafka)


@click.group()
@click.option("--home", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="state directory [env VISIONJOBS_BROKER_HOME; default ~/.cache/visionjobs/broker]")
@click.option("--port", type=int, default=None, help="Kafka port [env VISIONJOBS_BROKER_PORT; default 9092]")
@click.option("--kafka-version", default=None, help="Kafka version [env VISIONJOBS_KAFKA_VERSION; default 4.1.1]")
@click.pass_context
def broker(ctx: click.Context, home: Path | None, port: int | None, kafka_version: str | None) -> None:
    """A local single-node Kafka for development and tests (no Docker; needs Java 17 and, once, Maven)."""
    ctx.obj = LocalKafka(home=home, port=port, version=kafka_version)


@broker.command()
@click.option("--timeout", type=float, default=120.0, show_default=True, help="seconds to wait until it answers")
@click.pass_context
def up(ctx: click.Context, timeout: float) -> None:
    """Start the broker unless it runs already; print its bootstrap address."""
    try:
        click.echo(_kafka(ctx).up(timeout=timeout))
    except BrokerError as exc:
        raise click.ClickException(str(exc)) from exc


@broker.command()
@click.option("--timeout", type=float, default=30.0, show_default=True, help="seconds before SIGKILL")
@click.pass_context
def down(ctx: click.Context, timeout: float) -> None:
    """Stop the broker this home started (never any other process)."""
    _kafka(ctx).down(timeout=timeout)


@broker.command()
@click.option("--check", is_flag=True, help="exit 1 unless a broker answers")
@click.pass_context
def status(ctx: click.Context, check: bool) -> None:
    """Print the broker's state as JSON."""
    info = _kafka(ctx).status()
    click.echo(json.dumps(info, indent=2))
    if check and not info["answering"]:
        sys.exit(1)


@broker.command()
@click.pass_context
def wipe(ctx: click.Context) -> None:
    """Stop the broker and delete its data: the next `up` starts an empty cluster."""
    try:
        _kafka(ctx).wipe()
    except BrokerError as exc:
        raise click.ClickException(str(exc)) from exc


@broker.command()
@click.option("-n", "--lines", type=int, default=50, show_default=True)
@click.option("-f", "--follow", is_flag=True, help="keep printing new lines (Ctrl-C stops)")
@click.pass_context
def logs(ctx: click.Context, lines: int, follow: bool) -> None:
    """Print the end of the broker's server.log."""
    kafka = _kafka(ctx)
    path = kafka.server_log
    if not path.exists():
        raise click.ClickException(f"no log yet at {path}")
    if lines > 0:
        click.echo(tail_file(path, lines))
    if not follow:
        return
    with open(path, "rb") as handle:
        handle.seek(0, 2)
        try:
            while True:
                chunk = handle.read()
                if chunk:
                    click.echo(chunk.decode(errors="replace"), nl=False)
                else:
                    time.sleep(0.5)
        except KeyboardInterrupt:
            pass


@broker.command()
@click.pass_context
def jars(ctx: click.Context) -> None:
    """Download the Kafka jars (once) and print their directory."""
    try:
        click.echo(_kafka(ctx).resolve_jars())
    except BrokerError as exc:
        raise click.ClickException(str(exc)) from exc


def _pass_through(name: str, main_class: str, what: str) -> None:
    @broker.command(name, context_settings=PASS_THROUGH, add_help_option=False,
                    help=f"Run {what} ({main_class}) against the local broker; all arguments pass through "
                         "(--help shows the tool's own help).")
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    @click.pass_context
    def command(ctx: click.Context, args: tuple[str, ...]) -> None:
        kafka = _kafka(ctx)
        _exec(kafka, main_class, with_bootstrap(args, kafka.bootstrap))


def _exec(kafka: LocalKafka, main_class: str, args: list[str]) -> None:
    try:
        kafka.exec_tool(main_class, args)  # does not return
    except BrokerError as exc:
        raise click.ClickException(str(exc)) from exc


_pass_through("console-consumer", CONSOLE_CONSUMER, "kafka-console-consumer")
_pass_through("console-producer", CONSOLE_PRODUCER, "kafka-console-producer")
_pass_through("topics", TOPIC_COMMAND, "kafka-topics")
_pass_through("consumer-groups", CONSUMER_GROUP_COMMAND, "kafka-consumer-groups")


@broker.command(context_settings=PASS_THROUGH)
@click.option("--no-bootstrap", is_flag=True, help="do not add --bootstrap-server (tools that take none)")
@click.argument("main_class")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def tool(ctx: click.Context, no_bootstrap: bool, main_class: str, args: tuple[str, ...]) -> None:
    """Run any Kafka tool class from the broker's classpath, e.g.
    `tool org.apache.kafka.tools.GetOffsetShell --topic t`. Options of `tool` go before MAIN_CLASS."""
    kafka = _kafka(ctx)
    _exec(kafka, main_class, list(args) if no_bootstrap else with_bootstrap(args, kafka.bootstrap))
