"""``visionjobs topics create|list``: the contract's topics, created with the right partition count."""

from __future__ import annotations

import json

import click

from ..settings import get_settings


@click.group()
def topics() -> None:
    """Create or list the topics of the contract."""


@topics.command("create")
def create() -> None:
    """Create every topic of the contract that is missing (safe to run twice)."""
    from ..admin import create_topics

    for name, outcome in sorted(create_topics(get_settings()).items()):
        click.echo(f"{outcome:8s} {name}")


@topics.command("list")
def list_() -> None:
    """Show each topic of the contract: schema, partitions, compaction."""
    from ..admin import describe_topics

    for row in describe_topics(get_settings()):
        click.echo(json.dumps(row))
