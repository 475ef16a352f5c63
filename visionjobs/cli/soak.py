"""``visionjobs soak``: the chaos soak (SIGKILLed coordinators, a broker restart), checked for exactly-once."""

from __future__ import annotations

import json
import random
import signal
import sys
from pathlib import Path
from typing import Optional

import click


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@click.command()
@click.option("--jobs", type=int, default=1000, show_default=True, help="synthetic jobs to produce")
@click.option("--kills", type=int, default=5, show_default=True,
              help="how many times a random coordinator worker is SIGKILLed (and restarted)")
@click.option("--workers", type=int, default=2, show_default=True, help="coordinator workers")
@click.option("--broker-restart/--no-broker-restart", default=None,
              help="restart the broker once in the middle [default: on with the soak's own broker; "
                   "not possible with --bootstrap]")
@click.option("--rate", type=float, default=0.0, show_default=True,
              help="events per second (0: spread production over the chaos events, --slot seconds each)")
@click.option("--slot", type=float, default=0.0, show_default=True,
              help="production seconds per chaos event when --rate is 0 (0: from the workers' start-up "
                   "time and the session timeout, at least 15)")
@click.option("--seed", type=int, default=None, help="seed of the jobs and the chaos [default: random, printed]")
@click.option("--bootstrap", default=None,
              help="use this broker instead of starting one (topics get a unique prefix and are deleted after)")
@click.option("--partitions", type=int, default=8, show_default=True)
@click.option("--max-images", type=int, default=20, show_default=True, help="job sizes are 0..N")
@click.option("--timeout", type=float, default=600.0, show_default=True,
              help="seconds to wait for every completion after production and chaos")
@click.option("--linger", type=float, default=5.0, show_default=True,
              help="seconds to read again after the last completion (late duplicates)")
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="where the broker, worker logs and state go [default: a temporary dir, removed on success]")
@click.option("--keep", is_flag=True, help="keep the work dir (logs) even when the run passes")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
def soak(jobs: int, kills: int, workers: int, broker_restart: Optional[bool], rate: float, slot: float,
         seed: Optional[int], bootstrap: Optional[str], partitions: int, max_images: int, timeout: float,
         linger: float, work_dir: Optional[Path], keep: bool, as_json: bool) -> None:
    """Chaos soak: produce N synthetic jobs while K times a random coordinator worker is SIGKILLed
    (restarted right away) and the broker restarts once (its own Kafka, on a free port); then check
    exactly one completion per job and phase with the right counts (read_committed). Exit 1 on any
    duplicate, missing completion or wrong count. Cleans up its workers and broker always."""
    from visionjobs.testing.soak import SoakConfig, run_soak

    if broker_restart is None:
        broker_restart = bootstrap is None
    elif broker_restart and bootstrap:
        raise click.UsageError("--broker-restart needs the soak's own broker: it cannot restart the broker at "
                               f"{bootstrap}. Drop --bootstrap, or pass --no-broker-restart.")
    for name, value, low in (("--jobs", jobs, 1), ("--kills", kills, 0), ("--workers", workers, 1),
                             ("--partitions", partitions, 1)):
        if value < low:
            raise click.BadParameter(f"must be >= {low}", param_hint=name)
    if rate < 0:
        raise click.BadParameter("must be >= 0", param_hint="--rate")
    if seed is None:
        seed = random.SystemRandom().randrange(1, 2**31)
    config = SoakConfig(jobs=jobs, kills=kills, workers=workers, broker_restart=broker_restart, rate=rate,
                        seed=seed, bootstrap=bootstrap, partitions=partitions, max_images=max_images,
                        slot_s=slot, timeout_s=timeout, linger_s=linger, work_dir=work_dir, keep=keep)
    signal.signal(signal.SIGTERM, _interrupt)
    result = run_soak(config)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2, default=str))
    else:
        click.echo(result.format())
        if result.evidence:
            click.echo("evidence:\n" + json.dumps(result.evidence, indent=1, default=str))
    sys.exit(result.exit_code)
