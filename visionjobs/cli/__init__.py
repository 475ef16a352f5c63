"""The ``visionjobs`` command line. Subcommands live in their own modules and load on demand."""

from __future__ import annotations

import importlib

import click

# name -> "module:attribute"; imported only when the subcommand runs, so ``--help`` stays fast
# and a worker process never pays for CLI-only imports.
COMMANDS: dict[str, str] = {
    "broker": "visionjobs.cli.broker:broker",
    "topics": "visionjobs.cli.topics:topics",
    "inspect": "visionjobs.cli.inspect:inspect_cmd",
    "produce-test-batch": "visionjobs.cli.inspect:produce_test_batch",
    "submit": "visionjobs.cli.submit:submit",
    "loadgen": "visionjobs.cli.loadgen:loadgen",
    "smoke": "visionjobs.cli.smoke:smoke",
    "demo": "visionjobs.cli.demo:demo",
    "jobs": "visionjobs.cli.jobs:jobs",
    "soak": "visionjobs.cli.soak:soak",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(COMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str):
        if cmd_name in COMMANDS:
            module_name, attr = COMMANDS[cmd_name].split(":")
            return getattr(importlib.import_module(module_name), attr)
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup)
@click.version_option(package_name="visionjobs")
def main() -> None:
    """visionjobs: Kafka vision pipeline with exactly-once job completion."""


if __name__ == "__main__":  # pragma: no cover
    main()
