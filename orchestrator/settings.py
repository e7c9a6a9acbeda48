"""Service settings: one typed object with defaults and ``SLUICE_*`` environment overrides.

Nothing reads the environment anywhere else; the settings object is passed in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SLUICE_", extra="ignore", frozen=True)

    data_dir: Path = Path("./var")
    database_url: str | None = None  # default: SQLite file in data_dir
    policy_dir: Path | None = None
    # The country MMDB for a geo lockdown set through the API without a database, and for
    # source countries in PCAP analyses.
    geoip_database: Path | None = None
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 8080
    # Taken for the first admin token when the store has none; otherwise one is generated
    # and printed once.
    admin_token: SecretStr | None = None
    rate_limit_per_minute: Annotated[int, Field(ge=1)] = 1000
    # How long an idle keep-alive HTTP connection stays open. Longer than the idle
    # timeouts of common client pools (httpx and others: 5 s; load balancers: 60 s): with
    # uvicorn's default of 5 s, a detector reusing a connection just as the server closed
    # it lost about one signal in 15,000 to a reset under load (bench_intake).
    http_keep_alive_seconds: Annotated[int, Field(ge=1, le=3600)] = 75
    # How often the expiry sweep runs; rules are withdrawn within this of their expiry
    # plus the adapter's own time.
    expiry_interval: Annotated[float, Field(gt=0, le=10)] = 0.2
    retry_interval: Annotated[float, Field(gt=0, le=60)] = 0.5
    reconcile_interval: Annotated[float, Field(gt=0)] = 30.0
    policy_reload_interval: Annotated[float, Field(gt=0)] = 2.0
    # Announce retries: exponential backoff from retry_base to retry_max seconds, at most
    # max_attempts announces. Withdrawals are retried without limit.
    retry_base: Annotated[float, Field(gt=0)] = 1.0
    retry_max: Annotated[float, Field(gt=0)] = 60.0
    max_attempts: Annotated[int, Field(ge=1)] = 8
    batch_size: Annotated[int, Field(ge=1)] = 1000
    # How long POST/DELETE on rules wait for the adapter's answer before replying.
    api_wait_seconds: Annotated[float, Field(ge=0, le=60)] = 5.0
    max_ttl: Annotated[int, Field(ge=1)] = 30 * 24 * 3600
    # PCAP store (files under data_dir/pcaps): the largest upload, the total kept (oldest
    # captures are removed first to make room) and how long a capture is kept.
    pcap_max_bytes: Annotated[int, Field(ge=1024)] = 128 * 1024 * 1024
    pcap_max_total_bytes: Annotated[int, Field(ge=1024)] = 4 * 1024 * 1024 * 1024
    pcap_retention_days: Annotated[float, Field(gt=0)] = 30.0

    @model_validator(mode="after")
    def _pcap_limits(self) -> Settings:
        if self.pcap_max_bytes > self.pcap_max_total_bytes:
            raise ValueError("pcap_max_bytes must not exceed pcap_max_total_bytes")
        return self

    def sqlalchemy_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'sluice.db').resolve()}"
