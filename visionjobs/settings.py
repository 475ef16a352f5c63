"""Settings: one frozen object, read from ``VISIONJOBS_*`` environment variables.

Faust reads its own (unprefixed) environment names, e.g. ``BROKER_COMMIT_INTERVAL``, and
lets them override what we pass in code; everything of ours carries the ``VISIONJOBS_`` prefix.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent


def _default_bootstrap() -> str:
    # Tests and tools agree on one variable for the broker address.
    return os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VISIONJOBS_", frozen=True, extra="ignore")

    # --- Kafka ---------------------------------------------------------------------------
    bootstrap_servers: str = Field(default_factory=_default_bootstrap)
    partitions: int = Field(8, ge=1, description="partition count of every co-partitioned topic")
    replication_factor: int = Field(1, ge=1)
    processing_guarantee: Literal["exactly_once", "at_least_once"] = "exactly_once"
    commit_interval_s: float = Field(0.1, gt=0, description="Faust broker_commit_interval")
    session_timeout_s: float = Field(10.0, ge=6, description="consumer group session timeout: how fast a dead worker's partitions move")
    heartbeat_interval_s: float = Field(2.0, gt=0)
    group_instance_id: str | None = Field(None, description="static group membership: a restarted worker with the same id gets its partitions back without a rebalance (one id per worker!)")
    producer_linger_s: float = Field(0.0, ge=0, description="Faust producer_linger: how long the producers wait to fill a batch")
    topic_prefix: str = Field("", description="prefix for every topic name (tests use it to isolate runs)")
    app_id_prefix: str = "visionjobs"
    store: str = Field("memory://", description="table store: memory:// or rocksdb://")
    data_dir: Path = Path(".visionjobs")
    web_port: int = 6066
    web_enabled: bool = True
    log_json: bool = False
    log_level: str = "info"

    # --- Avro contract ---------------------------------------------------------------------
    schema_dir: Path = REPO_DIR / "avro_schemas"

    # --- Coordinator -----------------------------------------------------------------------
    job_timeout_s: float = Field(3600.0, gt=0, description="a job with no completion after this is TIMED_OUT")
    completed_retention_s: float = Field(86400.0, ge=0, description="how long the completed marker is kept")
    tick_interval_s: float = Field(10.0, gt=0, description="how often the expiry ticker scans the table")

    # --- Image loading (untrusted input) ---------------------------------------------------
    image_roots: Annotated[tuple[Path, ...], NoDecode] = (REPO_DIR / "images",)
    allow_http: bool = False
    http_allowed_hosts: Annotated[tuple[str, ...], NoDecode] = ()
    max_image_bytes: int = Field(20 * 1024 * 1024, gt=0)
    max_image_pixels: int = Field(40_000_000, gt=0)
    load_timeout_s: float = Field(10.0, gt=0)

    # --- Embedding agent -------------------------------------------------------------------
    model_path: Path = PACKAGE_DIR / "models" / "efficientnet_lite0_embed.onnx"
    model_name: str = "efficientnet-lite0"
    model_input_size: int = 224
    model_input_name: str = "pixel_values"
    model_output_name: str = "embedding"
    model_mean: tuple[float, float, float] = (127.0, 127.0, 127.0)
    model_std: tuple[float, float, float] = (128.0, 128.0, 128.0)
    trim_borders: bool = True
    ort_providers: Annotated[tuple[str, ...], NoDecode] = ()  # empty: CUDA when available, else CPU
    ort_intra_op_threads: int = 0
    # CUDA provider: how cuDNN picks a convolution algorithm for each new input shape (micro-batches
    # have 1..batch_size images, so a worker meets up to batch_size shapes)
    ort_cudnn_conv_algo_search: Literal["EXHAUSTIVE", "HEURISTIC", "DEFAULT"] = "EXHAUSTIVE"
    # run every micro-batch at batch_size rows (zero-padded): auto = on a GPU only (see Embedder)
    pad_batches: Literal["auto", "always", "never"] = "auto"
    batch_size: int = Field(16, ge=1)
    batch_wait_s: float = Field(0.05, ge=0)
    inference_timeout_s: float = Field(60.0, gt=0)
    # threads that load, decode and (embedding) preprocess images, per vision worker
    load_threads: int = Field(4, ge=1)

    # --- Keypoint agent --------------------------------------------------------------------
    detector: Literal["orb", "sift"] = "orb"
    max_keypoints: int = Field(500, ge=1)
    keypoints_concurrency: int = Field(2, ge=1)

    @field_validator("image_roots", mode="before")
    @classmethod
    def _split_roots(cls, v):
        if isinstance(v, str):
            return tuple(p for p in v.split(os.pathsep) if p)
        return v

    @field_validator("http_allowed_hosts", "ort_providers", mode="before")
    @classmethod
    def _split_csv(cls, v):
        if isinstance(v, str):
            return tuple(p.strip() for p in v.split(",") if p.strip())
        return v

    @property
    def broker_url(self) -> str:
        """Faust's broker URL list (``kafka://h1:p1;kafka://h2:p2``)."""
        return ";".join(f"kafka://{h.strip()}" for h in self.bootstrap_servers.split(",") if h.strip())


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
