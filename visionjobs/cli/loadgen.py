"""``visionjobs loadgen``: synthetic jobs straight into the batch and per-image result topics."""

from __future__ import annotations

import json
import time

import click

from ..settings import get_settings


@click.command("loadgen")
@click.option("--jobs", type=int, default=100, show_default=True)
@click.option("--max-images", type=int, default=20, show_default=True, help="job sizes are 0..N")
@click.option("--rate", type=float, default=0.0, help="events per second (0: as fast as possible)")
@click.option("--duplicates", type=float, default=0.2, show_default=True, help="fraction of results sent twice")
@click.option("--failures", type=float, default=0.1, show_default=True, help="fraction of FAILED results")
@click.option("--total-last", type=float, default=0.5, show_default=True,
              help="fraction of jobs whose batch event comes after all their results")
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--wait/--no-wait", default=False, help="wait for every completion and check exactly-once")
@click.option("--timeout", type=float, default=300.0, show_default=True)
def loadgen(jobs: int, max_images: int, rate: float, duplicates: float, failures: float, total_last: float,
            seed: int, wait: bool, timeout: float) -> None:
    """Produce synthetic jobs (sizes include 0, duplicates, results before totals, totals last)."""
    from ..testing.loadgen import LoadSpec, plan_jobs, produce
    from ..testing.verify import wait_for_completions

    settings = get_settings()
    spec = LoadSpec(jobs=jobs, max_images=max_images, duplicate_fraction=duplicates,
                    failure_fraction=failures, total_last_fraction=total_last, seed=seed)
    plans = plan_jobs(spec)
    started = time.monotonic()
    sent = produce(settings, plans, spec, rate=rate)
    elapsed = time.monotonic() - started
    out = {"jobs": jobs, "events": sent, "seconds": round(elapsed, 3), "events_per_s": round(sent / elapsed, 1)}
    if wait:
        report = wait_for_completions(settings, plans, timeout_s=timeout)
        out["report"] = report.summary()
        out["seconds_to_all_completions"] = round(time.monotonic() - started, 3)
        click.echo(json.dumps(out))
        if not report.ok:
            raise SystemExit(1)
        return
    click.echo(json.dumps(out))
