"""Builds the Faust app of one role. Each role has its own app id (consumer group) and worker command.

``faust -A visionjobs.workers.<role> worker`` imports a module that calls :func:`create_app` and
registers that role's agents on it. Creating the app does no I/O: Faust connects when the worker runs.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Optional

import faust

from . import codec, eos, metrics
from .logs import logging_config
from .settings import Settings, get_settings
from .tables import state_codec


class VisionApp(faust.App):
    def _create_directories(self) -> None:
        # Faust creates only the last path component; ours lives under VISIONJOBS_DATA_DIR.
        Path(self.conf.datadir).parent.mkdir(parents=True, exist_ok=True)
        super()._create_directories()

    async def on_first_start(self) -> None:
        await super().on_first_start()
        if self.producer_only or self.client_only:
            return
        # Before the consumer joins the group: the changelog topics (and the leader topic) must be in
        # the broker's metadata, or the first assignment leaves them out and the first table writes
        # fail (Faust then crashes the agent and acks the event it was processing: a lost event).
        topics = {f"{self.conf.id}-__assignor-__leader": (1, {})}
        for table in self.tables.values():
            topic = table.changelog_topic
            topics[topic.get_topic_name()] = (table.partitions or self.conf.topic_partitions,
                                              {"cleanup.policy": "compact"})
        if len(topics) > 1:
            from .admin import ensure_internal_topics

            settings: Settings = self.visionjobs_settings  # type: ignore[attr-defined]
            outcome = await asyncio.to_thread(ensure_internal_topics, settings.bootstrap_servers, topics,
                                              settings.replication_factor)
            logging.getLogger(__name__).info("internal topics ready: %s", outcome)


def create_app(role: str, settings: Optional[Settings] = None, **overrides) -> faust.App:
    settings = settings or get_settings()
    codec.register_faust_codec()
    state_codec.register_faust_codec()
    conf = dict(
        broker=settings.broker_url,
        processing_guarantee=settings.processing_guarantee,
        store=settings.store,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        broker_commit_interval=settings.commit_interval_s,
        broker_session_timeout=settings.session_timeout_s,
        # notice topics created after the worker started within 30 s, not Faust's default 5 min
        consumer_metadata_max_age_ms=30_000,
        broker_heartbeat_interval=settings.heartbeat_interval_s,
        producer_linger=settings.producer_linger_s,
        consumer_group_instance_id=settings.group_instance_id,
        web_enabled=settings.web_enabled,
        web_port=settings.web_port,
        web_bind="127.0.0.1",
        datadir=str(settings.data_dir / role),
        key_serializer="raw",
        value_serializer="raw",
        consumer_auto_offset_reset="earliest",
        table_standby_replicas=1,
        producer_acks=-1,
    )
    log_config = logging_config(settings.log_json, settings.log_level)
    if log_config is not None:
        conf["logging_config"] = log_config
    conf.update(overrides)
    app = VisionApp(f"{settings.app_id_prefix}-{role}", **conf)
    app.visionjobs_settings = settings  # type: ignore[attr-defined]
    app.visionjobs_role = role  # type: ignore[attr-defined]
    eos.install(app)

    if settings.web_enabled:
        @app.page("/metrics")
        async def metrics_page(web, request):  # noqa: ANN001 - faust view signature
            body, content_type = metrics.render()
            return web.bytes(body, headers={"Content-Type": content_type})

        @app.page("/healthz")
        async def health(web, request):  # noqa: ANN001
            return web.json({"role": role, "app": app.conf.id})

    return app
