"""Service settings: one typed object with defaults and ``SLUICE_*`` environment overrides.

Nothing reads the environment anywhere else; the settings object is passed in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from adapters.access import DEFAULT_DIRS, DEFAULT_PROGRAMS, HostAccess
from adapters.egress import EgressPolicy, parse_allow
from adapters.speakers import DEFAULT_ENTRIES, SpeakerEndpoints, parse_entry


def _split(value: Any, sep: str) -> Any:
    """``a<sep>b`` from the environment -> ``["a", "b"]`` (lists pass through)."""
    if isinstance(value, str):
        return [p.strip() for p in value.split(sep) if p.strip()]
    return value


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
    # /metrics (at the root) answers without a token: for a Prometheus that scrapes over a
    # management network. /api/v1/metrics always needs one.
    metrics_public: bool = False
    rate_limit_per_minute: Annotated[int, Field(ge=1)] = 1000
    # Signals one POST /incidents/bulk may carry (one rate-limit unit, one transaction);
    # more is refused with 413 batch_too_large. max_body_bytes bounds the body as well.
    bulk_max_signals: Annotated[int, Field(ge=1, le=100_000)] = 1000
    # Failed authentications (API tokens and node keys) allowed per client address and
    # minute; beyond that the address gets 429 until the window has room again.
    auth_failures_per_minute: Annotated[int, Field(ge=1)] = 20
    # Agent requests (heartbeats, metrics, incidents) allowed per node and minute.
    agent_rate_limit_per_minute: Annotated[int, Field(ge=1)] = 600
    # Key of the audit chain's HMAC (hex, >= 32 bytes); default: data_dir/audit.key,
    # created 0600 on first start. Never stored in the database.
    audit_key: SecretStr | None = None
    # Fernet key(s) for secrets at rest, comma-separated, the first one encrypts; default:
    # data_dir/secrets.key, created 0600 on first start. See `sluice secrets rotate`.
    secret_key: SecretStr | None = None
    # How long an idle keep-alive HTTP connection stays open. Longer than the idle
    # timeouts of common client pools (httpx and others: 5 s; load balancers: 60 s): with
    # uvicorn's default of 5 s, a detector reusing a connection just as the server closed
    # it lost about one signal in 15,000 to a reset under load (bench_intake).
    http_keep_alive_seconds: Annotated[int, Field(ge=1, le=3600)] = 75
    # A client has this long from connecting (or from its first byte on an idle keep-alive
    # connection) to send complete request headers, and this long more for the body; then
    # the connection is closed. Half-open connections cannot pile up.
    http_header_timeout_seconds: Annotated[float, Field(gt=0, le=300)] = 10.0
    http_body_timeout_seconds: Annotated[float, Field(gt=0, le=3600)] = 30.0
    # The request line and headers together (past it: 431 headers_too_large).
    http_max_header_bytes: Annotated[int, Field(ge=1024, le=1024 * 1024)] = 16 * 1024
    # The HTTP parser and event loop of `sluice serve`: auto takes httptools and uvloop
    # (1.6 times the requests per second of h11 on asyncio's loop under hey) when installed.
    http_parser: Literal["auto", "httptools", "h11"] = "auto"
    event_loop: Literal["auto", "uvloop", "asyncio"] = "auto"
    # Request bodies past this are refused with 413 while they are read (never buffered).
    max_body_bytes: Annotated[int, Field(ge=1024)] = 1024 * 1024
    # How often the expiry sweep runs; rules are withdrawn within this of their expiry
    # plus the adapter's own time.
    expiry_interval: Annotated[float, Field(gt=0, le=10)] = 0.2
    retry_interval: Annotated[float, Field(gt=0, le=60)] = 0.5
    reconcile_interval: Annotated[float, Field(gt=0)] = 30.0
    # several instances on PostgreSQL: the driver lease lapses this long after the holder's
    # last renewal (renewed every fifth of it); takeover within about this time
    lease_seconds: Annotated[float, Field(ge=2, le=60)] = 5.0
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

    # What adapters may touch on this host (adapters.access). Directories where files and
    # unix sockets named in adapter settings may be (``SLUICE_ADAPTER_DIRS``, separated by
    # ":"); the data and policy directories are refused whatever this says.
    adapter_dirs: Annotated[tuple[Path, ...], NoDecode] = DEFAULT_DIRS
    # Internal destinations outbound HTTP adapters may reach (``SLUICE_EGRESS_ALLOW``,
    # comma separated): networks or loopback, private, link-local, shared. Default: none.
    egress_allow: Annotated[tuple[str, ...], NoDecode] = ()
    # Where a BGP speaker's API may be reached over TCP (gobgp's host:port endpoint;
    # ``SLUICE_SPEAKER_ENDPOINTS``, comma separated): NETWORK[:PORT], [V6NETWORK]:PORT,
    # loopback[:PORT]. Default: gobgpd's port 50051 on loopback. Empty: unix sockets only.
    speaker_endpoints: Annotated[tuple[str, ...], NoDecode] = DEFAULT_ENTRIES
    # The programs adapters run; never taken from adapter settings.
    vtysh: str = DEFAULT_PROGRAMS["vtysh"]

    @field_validator("adapter_dirs", mode="before")
    @classmethod
    def _dirs(cls, v: Any) -> Any:
        return _split(v, ":")

    @field_validator("adapter_dirs")
    @classmethod
    def _absolute(cls, v: tuple[Path, ...]) -> tuple[Path, ...]:
        for d in v:
            if not d.is_absolute() or ".." in d.parts:
                raise ValueError(f"{d}: adapter directories must be absolute, without '..'")
        return v

    @field_validator("egress_allow", "speaker_endpoints", mode="before")
    @classmethod
    def _comma_lists(cls, v: Any) -> Any:
        return _split(v, ",")

    @field_validator("egress_allow")
    @classmethod
    def _allow_entries(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for entry in v:
            parse_allow(entry)  # ValueError says which entry is wrong
        return v

    @field_validator("speaker_endpoints")
    @classmethod
    def _speaker_entries(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for entry in v:
            parse_entry(entry)  # ValueError says which entry is wrong
        return v

    def host_access(self) -> HostAccess:
        """What adapters may touch on this host, for the adapter registry."""
        denied = (self.data_dir, *((self.policy_dir,) if self.policy_dir else ()))
        return HostAccess(
            allowed_dirs=self.adapter_dirs,
            denied_dirs=tuple(d.resolve() for d in denied),
            programs={"vtysh": self.vtysh},
            egress=EgressPolicy.from_entries(self.egress_allow),
            speakers=SpeakerEndpoints.from_entries(self.speaker_endpoints),
        )

    def sqlalchemy_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'sluice.db').resolve()}"
