"""What the service checks in a policy beyond its schema: the adapters it declares.

`sluice serve`, hot reload and `sluice policy lint` all call :func:`adapter_check`, so a
policy that lint accepts is one the service starts with: every ``${ENV}`` reference is
resolved and every adapter is built with its own typed settings model (nothing is
connected). Errors name the adapter's entry (``adapters.2.config.vtysh``), which the
loader turns into ``file:line``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import SecretStr, ValidationError

from adapters.base import AdapterConfig, Capability, Registry
from policies.errors import SluiceError
from policies.schema import AdapterDecl, Check, Policy, resolve_env
from policies.tables import EntryInvalid


def _resolve(value: Any, loc: tuple[int | str, ...], env: Mapping[str, str] | None) -> Any:
    """``${NAME}`` references resolved in every string under ``value``."""
    if isinstance(value, str):
        try:
            return resolve_env(value, env)
        except ValueError as exc:
            raise EntryInvalid(loc, str(exc)) from None
    if isinstance(value, dict):
        return {k: _resolve(v, (*loc, str(k)), env) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, (*loc, i), env) for i, v in enumerate(value)]
    return value


def adapter_configs(
    decls: Iterable[AdapterDecl], env: Mapping[str, str] | None = None
) -> list[AdapterConfig]:
    """Adapter configs from policy declarations, with ``${ENV}`` references resolved."""
    out = []
    for i, decl in enumerate(decls):
        loc: tuple[int | str, ...] = ("adapters", i)
        token = _resolve(decl.auth_token, (*loc, "auth_token"), env) if decl.auth_token else None
        try:
            out.append(
                AdapterConfig(
                    name=decl.name,
                    adapter_type=decl.adapter_type,
                    endpoint=_resolve(decl.endpoint, (*loc, "endpoint"), env),
                    auth_token=SecretStr(token) if token else None,
                    config=_resolve(decl.config, (*loc, "config"), env),
                    capabilities=tuple(Capability(c) for c in decl.capabilities)
                    if decl.capabilities is not None
                    else None,
                )
            )
        except (ValueError, ValidationError) as exc:
            raise EntryInvalid(loc, f"adapter {decl.name!r}: {exc}") from None
    return out


def _field_loc(loc: tuple[int | str, ...], field: str | None, config: AdapterConfig) -> Any:
    """Where in the declaration an adapter's settings error points, as far as known."""
    parts = (field or "").split(".")
    if parts[0] in ("endpoint", "auth_token", "capabilities", "adapter_type", "name"):
        return (*loc, parts[0])
    if parts[0] == "config":
        if len(parts) > 1 and parts[1] in config.config:
            return (*loc, "config", parts[1])
        return (*loc, "config")
    return loc


def adapter_check(registry: Registry, env: Mapping[str, str] | None = None) -> Check:
    """A policy check that resolves and builds every declared adapter."""

    def check(policy: Policy) -> None:
        configs = adapter_configs(policy.adapters, env)
        for i, config in enumerate(configs):
            loc: tuple[int | str, ...] = ("adapters", i)
            try:
                registry.create(config)
            except SluiceError as exc:
                raise EntryInvalid(_field_loc(loc, exc.field, config), exc.message) from None
            except (ValueError, ValidationError) as exc:
                raise EntryInvalid(loc, f"adapter {config.name!r}: {exc}") from None

    return check
