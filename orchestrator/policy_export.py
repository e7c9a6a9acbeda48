"""``sluice policy export``: the objects created through the API, as YAML to commit.

From a running service (``GET /api/v1/policy/export``) or, offline, straight from a store
(``--database``, with ``--policy-dir`` for the files the service runs with): only what the
files do not already declare, and the default tiers when neither declares tiers. The output
is a policy file: add its entries to the files in git (a section may be defined in one
file only) and the service, once reloaded, shows them as ``managed_by: policy``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
import yaml

HEADER = (
    "# Policy objects created through Sluice's API (managed_by: api), exported {at}.\n"
    "# Add this file to the policy directory in git (each key and entry in one file only).\n"
    "# Adapters created through the API are not in it: declare the ones tiers name.\n"
)


def to_yaml(document: dict[str, Any], at: datetime | None = None) -> str:
    stamp = (at or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    if not document:
        return HEADER.format(at=stamp) + "# (nothing: every object is declared in the files)\n"
    body = yaml.safe_dump(document, sort_keys=False, default_flow_style=False, allow_unicode=True)
    return HEADER.format(at=stamp) + body


def _from_store(database: str, policy_dir: Path | None) -> dict[str, Any]:
    from sqlalchemy import select

    from orchestrator.policy_doc import LAYER_KEY, LEGACY_KEY
    from orchestrator.store.db import make_engine
    from orchestrator.store.models import kv
    from policies.errors import PolicyInvalid
    from policies.layer import effective_layer
    from policies.schema import Policy, load_policy

    try:
        files = load_policy(policy_dir) if policy_dir is not None else Policy()
    except PolicyInvalid as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None

    engine = make_engine(database)
    try:
        with engine.connect() as conn:
            rows = dict(
                conn.execute(
                    select(kv.c.key, kv.c.value).where(kv.c.key.in_([LAYER_KEY, LEGACY_KEY]))
                ).all()
            )
    finally:
        engine.dispose()
    layer = rows.get(LAYER_KEY)
    return effective_layer(files, layer if layer is not None else rows.get(LEGACY_KEY) or {})


def _from_service(url: str, token: str) -> dict[str, Any]:
    try:
        resp = httpx.get(
            url.rstrip("/") + "/api/v1/policy/export",
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
    except httpx.HTTPError as exc:
        typer.echo(f"error: cannot reach {url}: {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        body = resp.json()
    except json.JSONDecodeError:
        typer.echo(f"error: {resp.status_code}: not a JSON answer", err=True)
        raise typer.Exit(1) from None
    if not body.get("ok"):
        e = body.get("error", {})
        typer.echo(f"error: {e.get('code', resp.status_code)}: {e.get('message', '')}", err=True)
        raise typer.Exit(1)
    document: dict[str, Any] = body["document"]
    return document


def export_command(  # noqa: PLR0917  # typer options, passed by name
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here (default: stdout).")
    ] = None,
    database: Annotated[
        str | None, typer.Option(help="Read this store directly instead of asking the service.")
    ] = None,
    policy_dir: Annotated[
        Path | None,
        typer.Option(envvar="SLUICE_POLICY_DIR", help="With --database: the service's files."),
    ] = None,
    url: Annotated[str, typer.Option("--url", envvar="SLUICE_URL")] = "http://127.0.0.1:8080",
    token: Annotated[str, typer.Option("--token", envvar="SLUICE_TOKEN")] = "",
    as_json: Annotated[
        bool, typer.Option("--json", help="Print {document, yaml, output} as JSON.")
    ] = False,
) -> None:
    """Write the policy objects created through the API as YAML, to commit."""
    if not database and not token:
        typer.echo("error: no API token: pass --token or set SLUICE_TOKEN", err=True)
        raise typer.Exit(2)
    document = _from_store(database, policy_dir) if database else _from_service(url, token)
    text = to_yaml(document)
    if output is not None:
        try:
            output.write_text(text, encoding="utf-8")
        except OSError as exc:
            typer.echo(f"error: cannot write {output}: {exc.strerror or exc}", err=True)
            raise typer.Exit(1) from None
    if as_json:
        out = {"document": document, "yaml": text, "output": str(output) if output else None}
        typer.echo(json.dumps(out, indent=2))
    elif output is None:
        typer.echo(text, nl=False)
    else:
        typer.echo(f"wrote {output}", err=True)
