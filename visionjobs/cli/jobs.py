"""``visionjobs jobs JOB_ID``: a job's progress from a coordinator worker's web port."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request

import click


@click.command()
@click.argument("job_id")
@click.option("--url", default=None,
              help="a coordinator worker's web address [default: http://127.0.0.1:$VISIONJOBS_WEB_PORT]")
@click.option("--timeout", type=float, default=10.0, show_default=True)
def jobs(job_id: str, url: str | None, timeout: float) -> None:
    """GET /jobs/JOB_ID from a coordinator worker and print it (any coordinator works: the request
    is forwarded to the worker that owns the job's partition)."""
    from urllib.parse import quote

    if url is None:
        from visionjobs.settings import get_settings

        url = f"http://127.0.0.1:{get_settings().web_port}"
    target = f"{url.rstrip('/')}/jobs/{quote(job_id, safe='')}"
    try:
        with urllib.request.urlopen(target, timeout=timeout) as resp:
            body = resp.read()
            status = resp.status
    except urllib.error.HTTPError as exc:
        body, status = exc.read(), exc.code
    except (urllib.error.URLError, OSError) as exc:
        raise click.ClickException(f"cannot reach a coordinator at {url}: {exc}") from exc
    try:
        click.echo(json.dumps(json.loads(body), indent=2))
    except ValueError:
        click.echo(body.decode(errors="replace"))
    if status == 404:
        sys.exit(1)
    if status >= 400:
        sys.exit(2)
