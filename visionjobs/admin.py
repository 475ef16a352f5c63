"""Topic administration with confluent-kafka's AdminClient: create the contract, idempotently."""

from __future__ import annotations

import logging
import time
from typing import Iterable, Optional

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from .settings import Settings
from .topics import CONTRACT, TopicSpec, topic_config, topic_name

log = logging.getLogger(__name__)


def admin_client(settings: Settings) -> AdminClient:
    return AdminClient({"bootstrap.servers": settings.bootstrap_servers})


def create_topics(settings: Settings, specs: Iterable[TopicSpec] = CONTRACT,
                  admin: Optional[AdminClient] = None, timeout: float = 30.0) -> dict[str, str]:
    """Create every topic of the contract that is missing. Returns {topic: "created"|"exists"}.

    An existing topic with another partition count is an error: the coordinator's join would be
    silently wrong, so we refuse instead of carrying on.
    """
    admin = admin or admin_client(settings)
    specs = list(specs)
    existing = admin.list_topics(timeout=timeout).topics
    outcome: dict[str, str] = {}
    to_create = []
    for spec in specs:
        name = topic_name(settings, spec.name)
        if name in existing:
            partitions = len(existing[name].partitions)
            if partitions != settings.partitions:
                raise RuntimeError(
                    f"topic {name} has {partitions} partitions, the contract needs {settings.partitions}: "
                    "co-partitioning would break; recreate it or set VISIONJOBS_PARTITIONS")
            outcome[name] = "exists"
        else:
            to_create.append(NewTopic(name, num_partitions=settings.partitions,
                                      replication_factor=settings.replication_factor,
                                      config=topic_config(spec)))
    if to_create:
        futures = admin.create_topics(to_create, operation_timeout=timeout, request_timeout=timeout)
        for name, fut in futures.items():
            try:
                fut.result()
                outcome[name] = "created"
            except KafkaException as exc:
                if exc.args[0].name() == "TOPIC_ALREADY_EXISTS":
                    outcome[name] = "exists"
                else:
                    raise
        wait_until_visible(admin, [t.topic for t in to_create], settings.partitions, timeout)
    return outcome


def ensure_internal_topics(bootstrap_servers: str, topics: dict[str, tuple[int, dict[str, str]]],
                           replication_factor: int = 1, timeout: float = 30.0) -> dict[str, str]:
    """Create missing internal topics ({name: (partitions, config)}) and wait until the broker's
    metadata shows them. A worker calls this before its consumer joins the group: Faust creates its
    changelog topics itself, but a topic created a moment before the first rebalance is often not in
    the metadata yet, the assignment then leaves it out, and the first events fail on it."""
    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    existing = admin.list_topics(timeout=timeout).topics
    missing = [NewTopic(name, num_partitions=partitions, replication_factor=replication_factor, config=config)
               for name, (partitions, config) in topics.items() if name not in existing]
    outcome = {name: "exists" for name in topics if name in existing}
    if missing:
        for name, fut in admin.create_topics(missing, operation_timeout=timeout, request_timeout=timeout).items():
            try:
                fut.result()
                outcome[name] = "created"
            except KafkaException as exc:
                if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                    raise
                outcome[name] = "exists"
    for partitions in {p for p, _ in topics.values()}:
        wait_until_visible(admin, [n for n, (p, _) in topics.items() if p == partitions], partitions, timeout)
    return outcome


def wait_until_visible(admin: AdminClient, names: list[str], partitions: int, timeout: float = 30.0) -> None:
    """Wait until the broker's metadata shows every topic with all partitions led.

    A worker that subscribes before its topics are visible gets no partitions and only notices the
    topics at its next metadata refresh; a freshly started broker can take a moment to show them.
    """
    deadline = time.monotonic() + timeout
    missing = list(names)
    while missing:
        md = admin.list_topics(timeout=5).topics
        missing = [n for n in names if n not in md or len(md[n].partitions) != partitions
                   or any(p.leader < 0 for p in md[n].partitions.values())]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics not visible after {timeout}s: {missing}")
        time.sleep(0.2)


def describe_topics(settings: Settings, admin: Optional[AdminClient] = None) -> list[dict]:
    admin = admin or admin_client(settings)
    md = admin.list_topics(timeout=15).topics
    out = []
    for spec in CONTRACT:
        name = topic_name(settings, spec.name)
        t = md.get(name)
        out.append({"topic": name, "schema": spec.schema, "exists": t is not None,
                    "partitions": len(t.partitions) if t is not None else None,
                    "compacted": spec.compacted, "doc": spec.doc})
    return out


def delete_topics(settings: Settings, names: Iterable[str], admin: Optional[AdminClient] = None) -> None:
    admin = admin or admin_client(settings)
    names = list(names)
    if not names:
        return
    for fut in admin.delete_topics(names, operation_timeout=30).values():
        try:
            fut.result()
        except KafkaException as exc:
            if exc.args[0].name() != "UNKNOWN_TOPIC_OR_PART":
                raise


def delete_environment(settings: Settings, admin: Optional[AdminClient] = None) -> list[str]:
    """Delete every topic of this settings' prefix (contract topics and the app's changelogs) and
    the app's consumer groups. For throwaway environments (demo, smoke, soak); returns the topics."""
    admin = admin or admin_client(settings)
    prefixes = tuple(p for p in (settings.topic_prefix, f"{settings.app_id_prefix}-") if p)
    names = [t for t in admin.list_topics(timeout=15).topics if t.startswith(prefixes)]
    delete_topics(settings, names, admin=admin)
    try:  # the workers' consumer groups (their committed offsets)
        listed = admin.list_consumer_groups(request_timeout=10).result()
        groups = [g.group_id for g in listed.valid if g.group_id.startswith(f"{settings.app_id_prefix}-")]
        for fut in (admin.delete_consumer_groups(groups, request_timeout=10).values() if groups else ()):
            try:
                fut.result()
            except KafkaException:
                pass
    except KafkaException as exc:
        log.warning("could not delete consumer groups: %s", exc)
    return names

