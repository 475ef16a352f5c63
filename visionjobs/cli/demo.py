"""``visionjobs demo``: the sample job through the whole pipeline on this machine (``make demo``)."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import click


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@click.command()
@click.option("--images", "images_dir", type=click.Path(path_type=Path, file_okay=False, exists=True),
              default=None, help="directory of the job's images [default: the repository's images/]")
@click.option("--timeout", type=float, default=180.0, show_default=True,
              help="seconds to wait for the job's completions")
@click.option("--keep", is_flag=True, help="keep the run's topics and worker logs")
@click.option("--json", "as_json", is_flag=True, help="also print the summary as JSON (last line)")
def demo(images_dir: Path | None, timeout: float, keep: bool, as_json: bool) -> None:
    """Start the local broker if none answers, create the topics, start the embedding, keypoint and
    coordinator workers, submit the sample images as one job, print both completion events and each
    image's nearest other image by embedding similarity, then stop everything it started."""
    from visionjobs.demo import SAMPLE_IMAGES, run_demo

    signal.signal(signal.SIGTERM, _interrupt)
    try:
        summary = run_demo(images_dir or SAMPLE_IMAGES, timeout_s=timeout, keep=keep, out=click.echo)
    except KeyboardInterrupt:
        click.echo("interrupted; everything the demo started has been stopped", err=True)
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - report, after the stack has been taken down
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(summary))
    if not summary["ok"]:
        click.echo("demo finished, but not every check passed", err=True)
        sys.exit(1)
