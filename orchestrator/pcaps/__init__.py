"""PCAPs: captures attached to incidents, stored as files, parsed and analysed with dpkt.

reader    capture files (pcap, pcapng) streamed record by record; packet decoding
analysis  one streaming pass -> vectors, sources, sizes, recommended FlowSpec rules
store     files + rows: upload checks, size and retention limits, pages, cached reports
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from orchestrator.pcaps.store import GeoLookup, Limits, PcapStore
from orchestrator.service import Service
from policies.errors import PolicyInvalid
from policies.geo import GeoDB

log = logging.getLogger("sluice.pcaps")


class GeoSource:
    """The configured MMDB, opened on first use and again when its path changes."""

    def __init__(self, path_of: Callable[[], Path | None]) -> None:
        self.path_of = path_of
        self._db: GeoDB | None = None
        self._lock = threading.Lock()

    def __call__(self) -> GeoLookup | None:
        path = self.path_of()
        if path is None:
            return None
        with self._lock:
            if self._db is None or self._db.path != path:
                if self._db is not None:
                    self._db.close()
                    self._db = None
                try:
                    self._db = GeoDB(path)
                except PolicyInvalid as exc:
                    log.warning("no source countries in PCAP analyses: %s", exc)
                    return None
            return self._db.country


def build_store(service: Service) -> PcapStore:
    s = service.settings

    def geo_path() -> Path | None:
        if s.geoip_database is not None:
            return s.geoip_database
        lockdown = service.policy.geo_lockdown
        return lockdown.database if lockdown is not None else None

    return PcapStore(
        service.engine,
        service.audit,
        s.data_dir / "pcaps",
        Limits(
            max_bytes=s.pcap_max_bytes,
            max_total_bytes=s.pcap_max_total_bytes,
            retention=timedelta(days=s.pcap_retention_days),
        ),
        geo=GeoSource(geo_path),
    )


__all__ = ["GeoSource", "PcapStore", "build_store"]
