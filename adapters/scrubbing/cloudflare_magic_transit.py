"""``cloudflare_magic_transit``: divert a prefix by advertising it from Cloudflare.

What it does: the integration's targets are BYOIP prefixes onboarded to Magic Transit
with on-demand advertisement (``prefixes: [{prefix, prefix_id}]`` plus ``account_id``).
Announce calls ``PATCH /accounts/{account_id}/addressing/prefixes/{prefix_id}/bgp/prefixes/
{bgp_prefix_id}`` with ``{"on_demand": {"advertised": true}}`` on the BGP prefix that
covers the whole BYOIP prefix; Cloudflare then originates the prefix from its network,
scrubs the traffic and hands the clean part to the operator through the Magic Transit
tunnels. Withdraw sends ``false`` (unless another announced intent still needs the
prefix). ``active()``/``status()`` list ``GET .../bgp/prefixes``. See
:mod:`adapters.cloudflare.adapter`.

The operator must still withdraw the prefix from its own upstreams (or let
Cloudflare's more attractive path win); Sluice does not touch the operator's own BGP
here. Auth: API token (``Authorization: Bearer``), checked at
``/accounts/{account_id}/tokens/verify`` (or ``/user/tokens/verify``, ``token_owner: user``).
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import field_validator

from adapters.base import AdapterConfig, resolve_capabilities, validate_settings
from adapters.cloudflare.adapter import PrefixAdvertisement, PrefixSettings, PrefixTarget
from adapters.cloudflare.api import DEFAULT_ENDPOINT
from adapters.scrubbing.common import default_endpoint


class MagicTransitSettings(PrefixSettings):
    @field_validator("prefixes")
    @classmethod
    def _some(cls, v: tuple[PrefixTarget, ...]) -> tuple[PrefixTarget, ...]:
        if not v:
            raise ValueError("at least one BYOIP prefix ({prefix, prefix_id}) is required")
        return v


class MagicTransitAdapter(PrefixAdvertisement[MagicTransitSettings]):
    adapter_type: ClassVar[str] = "cloudflare_magic_transit"

    @classmethod
    def from_config(cls, config: AdapterConfig) -> MagicTransitAdapter:
        settings = validate_settings(
            MagicTransitSettings, config, **default_endpoint(config, DEFAULT_ENDPOINT)
        )
        return cls(config.name, settings, resolve_capabilities(cls, config))
