"""``visionjobs smoke``: several jobs end to end; exactly one completion per job and phase."""

from __future__ import annotations

import json
import signal
import sys

import click


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@click.command()
@click.option("--jobs", "n_jobs", type=int, default=3, show_default=True,
              help="number of jobs (the first three: all samples, one image outside the roots, empty)")
@click.option("--no-start", is_flag=True,
              help="use workers that already run (with this environment's settings) instead of starting them")
@click.option("--timeout", type=float, default=180.0, show_default=True, help="seconds to wait for the completions")
@click.option("--linger", type=float, default=3.0, show_default=True,
              help="seconds to keep reading after the last completion (to catch duplicates)")
@click.option("--json", "as_json", is_flag=True, help="print the full report as JSON")
def smoke(n_jobs: int, no_start: bool, timeout: float, linger: float, as_json: bool) -> None:
    """Run N jobs through the embedding, keypoint and coordinator workers (started here, in an
    isolated run, unless --no-start) and check each job's completions on both completion topics
    (read_committed): present, exactly one per phase, COMPLETED, with the right counts. Exit 1 on
    any failure."""
    from visionjobs.demo import run_smoke

    if n_jobs < 1:
        raise click.BadParameter("must be >= 1", param_hint="--jobs")
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        report = run_smoke(jobs=n_jobs, start=not no_start, timeout_s=timeout, linger_s=linger)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        for job in report.jobs:
            phases = "  ".join(
                f"{phase} " + (",".join(f"{c['status']} {c['done']}/{c['total']} failed={c['failed']}" for c in cs)
                               or "none")
                for phase, cs in job.completions.items())
            click.echo(f"{'ok  ' if job.ok else 'FAIL'}  {job.name:<14} {job.job_id:<32} images={job.images:<3} {phases}")
    for job in report.failures():
        click.echo(f"FAILED {job.name} ({job.job_id}): {'; '.join(job.problems)}", err=True)
    if report.error:
        click.echo(f"FAILED: {report.error}", err=True)
    click.echo(f"smoke {'passed' if report.ok else 'FAILED'}: {len(report.jobs)} jobs in {report.seconds:.1f}s",
               err=True)
    sys.exit(0 if report.ok else 1)
