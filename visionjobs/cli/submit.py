"""``visionjobs submit``: publish a job's images (the product-finder side), optionally wait for it.

    visionjobs submit images/                       # every image of a directory
    visionjobs submit list.txt --job-id job-42      # a list file: one path or URI per line
    visionjobs submit a.jpg b.jpg --wait --timeout 120
"""

from __future__ import annotations

import json
import sys

import click


@click.command()
@click.argument("sources", nargs=-1, required=True)
@click.option("--job-id", default=None, help="job id (default: job-<random>)")
@click.option("--wait", "wait_", is_flag=True, help="wait for both phase completions and print them")
@click.option("--timeout", type=float, default=300.0, show_default=True, help="seconds to wait with --wait")
@click.option("--uri-style", type=click.Choice(["path", "file"]), default="path", show_default=True,
              help="publish local images as absolute paths or as file:// URIs")
@click.option("--allow-outside-roots", is_flag=True,
              help="publish local images outside VISIONJOBS_IMAGE_ROOTS anyway (the workers will FAIL them)")
@click.option("--no-progress", is_flag=True, help="no progress bar on stderr")
def submit(sources: tuple[str, ...], job_id: str | None, wait_: bool, timeout: float, uri_style: str,
           allow_outside_roots: bool, no_progress: bool) -> None:
    """Publish one ProductImageReady per image of SOURCES (directories, list files, image paths or
    URIs), then ProductsCollectionsCompleted and ProductsImagesReadyBatch, all keyed by the job id."""
    from visionjobs.product_finder import CompletionWatcher, SubmitError, completion_dict, submit as do_submit
    from visionjobs.settings import get_settings

    settings = get_settings()
    watcher = None
    try:
        if wait_:
            from visionjobs.admin import create_topics

            create_topics(settings)
            watcher = CompletionWatcher(settings)
            watcher.mark()  # before publishing: read_committed from here on
        try:
            submitted, images = do_submit(settings, sources, job_id=job_id, uri_style=uri_style,
                                          allow_outside_roots=allow_outside_roots, progress=not no_progress)
        except SubmitError as exc:
            raise click.ClickException(str(exc)) from exc
        if not images:
            click.echo(f"warning: no images found in {', '.join(sources)}; submitted an empty job", err=True)
        click.echo(json.dumps({"submitted": submitted.to_dict()}), err=wait_)
        if not wait_:
            return
        assert watcher is not None
        click.echo(f"waiting up to {timeout:g}s for job {submitted.job_id} ...", err=True)
        done = watcher.wait([submitted.job_id], timeout_s=timeout)
        out = {phase: [completion_dict(r) for r in watcher.completions.get(submitted.job_id, phase)]
               for phase in watcher.phases}
        click.echo(json.dumps({"job_id": submitted.job_id, "completions": out}, indent=2))
        if not done:
            missing = [p for p, recs in out.items() if not recs]
            click.echo(f"timed out after {timeout:g}s: no {', '.join(missing)} completion for job "
                       f"{submitted.job_id} (are the workers running? was this job id completed before?)", err=True)
            sys.exit(2)
        if any(len(recs) > 1 for recs in out.values()):
            click.echo("more than one completion for a phase: exactly-once was violated", err=True)
            sys.exit(3)
    finally:
        if watcher is not None:
            watcher.close()
