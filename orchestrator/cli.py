"""The ``sluice`` command line.

``sluice serve`` runs the service. The other commands talk to a running service's REST API
(``--url``/``SLUICE_URL``, ``--token``/``SLUICE_TOKEN``), except ``sluice audit verify
--database``, which checks the audit chain straight from the store.
"""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Sluice: BGP mitigation orchestration.", no_args_is_help=True)
rules_app = typer.Typer(help="Mitigation rules.", no_args_is_help=True)
adapters_app = typer.Typer(help="Adapters.", no_args_is_help=True)
audit_app = typer.Typer(help="The hash-chained audit log.", no_args_is_help=True)
tokens_app = typer.Typer(help="API tokens (admin scope).", no_args_is_help=True)
app.add_typer(rules_app, name="rules")
app.add_typer(adapters_app, name="adapters")
app.add_typer(audit_app, name="audit")
app.add_typer(tokens_app, name="tokens")

console = Console()
err = Console(stderr=True)

Url = Annotated[str, typer.Option("--url", envvar="SLUICE_URL", help="Service base URL.")]
Token = Annotated[str, typer.Option("--token", envvar="SLUICE_TOKEN", help="API token.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print the raw JSON answer.")]
DEFAULT_URL = "http://127.0.0.1:8080"


def _mount_optional(name: str, module: str, attr: str, help_text: str) -> None:
    """Mount a sub-app that lives in another package (policy tools, the lab) if present."""
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return
    sub = getattr(mod, attr, None)
    if isinstance(sub, typer.Typer):
        app.add_typer(sub, name=name, help=help_text)


_mount_optional("policy", "policies.cli", "app", "Lint, explain and plan policy directories.")
_mount_optional("lab", "labs.cli", "app", "Real BGP peers in network namespaces to try Sluice.")


# ---------------------------------------------------------------- serve


@app.command()
def serve(
    data_dir: Annotated[Path, typer.Option(envvar="SLUICE_DATA_DIR")] = Path("./var"),
    policy_dir: Annotated[Path | None, typer.Option(envvar="SLUICE_POLICY_DIR")] = None,
    database_url: Annotated[str | None, typer.Option(envvar="SLUICE_DATABASE_URL")] = None,
    host: Annotated[str, typer.Option(envvar="SLUICE_HOST")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="SLUICE_PORT")] = 8080,
    log_level: Annotated[str, typer.Option(envvar="SLUICE_LOG_LEVEL")] = "info",
) -> None:
    """Run the service (REST API, dispatcher, TTL expiry, reconciliation)."""
    import uvicorn

    from orchestrator.api.app import create_app
    from orchestrator.instance import InstanceLock
    from orchestrator.service import Service
    from orchestrator.settings import Settings
    from policies.errors import SluiceError

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # APScheduler logs every run of our sub-second jobs at INFO; its warnings still show
    logging.getLogger("apscheduler").setLevel(max(logging.WARNING, logging.root.level))
    settings = Settings(
        data_dir=data_dir, policy_dir=policy_dir, database_url=database_url, host=host, port=port
    )
    # one service per data directory: taken before the store, the policy or any speaker is
    # touched, so a second `serve` changes nothing (the kernel drops it when we die)
    lock = InstanceLock(settings.data_dir)
    try:
        lock.acquire()
        service = Service(settings)
    except SluiceError as exc:
        err.print(f"[red]cannot start:[/red] {exc.message}")
        raise typer.Exit(2) from None
    try:
        # log_config=None: uvicorn keeps our logging set-up (one format, quiet APScheduler)
        uvicorn.run(
            create_app(service),
            host=host,
            port=port,
            log_level=log_level,
            lifespan="on",
            log_config=None,
            timeout_keep_alive=settings.http_keep_alive_seconds,
        )
    finally:
        lock.release()


@app.command()
def backup(
    output: Annotated[Path, typer.Argument(help="A new directory to write the backup into.")],
    data_dir: Annotated[Path, typer.Option(envvar="SLUICE_DATA_DIR")] = Path("./var"),
    as_json: AsJson = False,
) -> None:
    """Copy a (running) service's SQLite store and key files into OUTPUT, consistently."""
    from orchestrator.instance import backup as make_backup
    from policies.errors import SluiceError

    try:
        res = make_backup(data_dir, output)
    except SluiceError as exc:
        err.print(f"[red]backup failed:[/red] {exc.message}")
        raise typer.Exit(1) from None
    if as_json:
        print(json.dumps({"directory": str(res.directory), "pages": res.pages, "files": res.files}))
        return
    console.print(f"backup written to {res.directory}: {', '.join(res.files)} ({res.pages} pages)")


# ---------------------------------------------------------------- client helpers


def _call(method: str, url: str, token: str, path: str, **kwargs: Any) -> dict[str, Any]:
    try:
        resp = httpx.request(
            method,
            url.rstrip("/") + "/api/v1" + path,
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
            **kwargs,
        )
    except httpx.HTTPError as exc:
        err.print(f"[red]cannot reach {url}:[/red] {exc}")
        raise typer.Exit(2) from None
    try:
        body: dict[str, Any] = resp.json()
    except ValueError:
        err.print(f"[red]{resp.status_code}: not a JSON answer[/red]")
        raise typer.Exit(1) from None
    if not body.get("ok"):
        e = body.get("error", {})
        err.print(f"[red]{e.get('code', resp.status_code)}:[/red] {e.get('message', '')}")
        raise typer.Exit(1)
    return body


def _rules_table(rules: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title)
    for col in ("id", "state", "type", "target", "adapter", "expires", "origin", "intent"):
        table.add_column(col)
    for r in rules:
        state = r["state"] + (" (dry-run)" if r["dry_run"] else "")
        table.add_row(
            str(r["id"]),
            state,
            r["intent_type"],
            r["target_ip"],
            r["adapter_name"],
            r["expires_at"] or "never",
            r["origin"],
            r["intent"],
        )
    return table


# ---------------------------------------------------------------- rules


@rules_app.command("list")
def rules_list(url: Url = DEFAULT_URL, token: Token = "", as_json: AsJson = False) -> None:
    """Rules that are live (pending, active, failed, withdrawing)."""
    body = _call("GET", url, token, "/mitigation/rules")
    if as_json:
        console.print_json(json.dumps(body))
        return
    console.print(_rules_table(body["rules"], f"{body['total']} live rules"))


@rules_app.command("history")
def rules_history(
    limit: Annotated[int, typer.Option(min=1, max=500)] = 100,
    url: Url = DEFAULT_URL,
    token: Token = "",
    as_json: AsJson = False,
) -> None:
    """All rules, newest first, including withdrawn and expired ones."""
    body = _call("GET", url, token, "/mitigation/rules/history", params={"limit": limit})
    if as_json:
        console.print_json(json.dumps(body))
        return
    console.print(_rules_table(body["rules"], f"history ({body['total']} rules)"))


@rules_app.command("show")
def rules_show(rule_id: int, url: Url = DEFAULT_URL, token: Token = "") -> None:
    """One rule with its event history."""
    console.print_json(json.dumps(_call("GET", url, token, f"/mitigation/rules/{rule_id}")))


@rules_app.command("add")
def rules_add(
    target_ip: str,
    intent_type: Annotated[str, typer.Option("--type", help="blackhole, flowspec, scrubbing")],
    adapter: Annotated[str, typer.Option(help="Adapter id or name.")],
    ttl: Annotated[int | None, typer.Option(help="Seconds; 0 = no expiry.")] = None,
    reason: str = "",
    dry_run: bool = False,
    field: Annotated[
        list[str] | None,
        typer.Option("--set", help="Extra field, e.g. --set protocol=udp --set source_port=123"),
    ] = None,
    url: Url = DEFAULT_URL,
    token: Token = "",
    as_json: AsJson = False,
) -> None:
    """Announce a manual rule."""
    body: dict[str, Any] = {
        "target_ip": target_ip,
        "intent_type": intent_type,
        "adapter_id": int(adapter) if adapter.isdigit() else adapter,
        "reason": reason,
        "dry_run": dry_run,
    }
    if ttl is not None:
        body["ttl"] = ttl
    for item in field or []:
        k, sep, v = item.partition("=")
        if not sep:
            err.print(f"[red]--set wants KEY=VALUE, got {item!r}[/red]")
            raise typer.Exit(2)
        body[k] = v.split(",") if k in ("communities", "large_communities", "peers") else v
    res = _call("POST", url, token, "/mitigation/rules", json=body)
    if as_json:
        console.print_json(json.dumps(res))
        return
    r = res["rule"]
    note = " (already existed; expiry extended)" if res["deduplicated"] else ""
    console.print(f"rule {r['id']}: {r['state']}{note}: {r['intent']} via {r['adapter_name']}")
    if r.get("error"):
        console.print(f"[yellow]adapter said:[/yellow] {r['error']}")


@rules_app.command("withdraw")
def rules_withdraw(
    rule_id: int, reason: str = "", url: Url = DEFAULT_URL, token: Token = ""
) -> None:
    """Withdraw a rule now."""
    res = _call(
        "DELETE",
        url,
        token,
        f"/mitigation/rules/{rule_id}",
        content=json.dumps({"reason": reason}) if reason else None,
    )
    r = res["rule"]
    console.print(f"rule {r['id']}: {r['state']}")


# ---------------------------------------------------------------- adapters


@adapters_app.command("list")
def adapters_list(url: Url = DEFAULT_URL, token: Token = "", as_json: AsJson = False) -> None:
    """Adapters with their status and capabilities."""
    body = _call("GET", url, token, "/mitigation/adapters")
    if as_json:
        console.print_json(json.dumps(body))
        return
    table = Table(title="adapters")
    for col in ("id", "name", "type", "status", "capabilities", "endpoint", "managed by"):
        table.add_column(col)
    for a in body["adapters"]:
        table.add_row(
            str(a["id"]),
            a["name"],
            a["adapter_type"],
            a["status"],
            ", ".join(a["capabilities"]),
            a["endpoint"],
            a["managed_by"],
        )
    console.print(table)


@adapters_app.command("test")
def adapters_test(adapter_id: int, url: Url = DEFAULT_URL, token: Token = "") -> None:
    """Check an adapter's connectivity, auth and latency."""
    console.print_json(
        json.dumps(_call("POST", url, token, f"/mitigation/adapters/{adapter_id}/test"))
    )


# ---------------------------------------------------------------- audit and tokens


@audit_app.command("verify")
def audit_verify(
    database: Annotated[
        str | None,
        typer.Option(help="Check this database URL directly instead of asking the service."),
    ] = None,
    url: Url = DEFAULT_URL,
    token: Token = "",
) -> None:
    """Verify the audit hash chain and report the first tampered entry."""
    if database:
        from orchestrator.store.audit import verify
        from orchestrator.store.db import make_engine

        engine = make_engine(database)
        with engine.connect() as conn:
            res = verify(conn)
        valid, entries, bad, problem = res.ok, res.entries, res.first_bad_id, res.problem
    else:
        body = _call("GET", url, token, "/audit/verify")
        valid, entries, bad, problem = (
            body["valid"],
            body["entries"],
            body["first_bad_id"],
            body["problem"],
        )
    if valid:
        console.print(f"audit log intact: {entries} entries")
        return
    err.print(f"[red]audit log tampered:[/red] entry {bad}: {problem}")
    raise typer.Exit(1)


@tokens_app.command("create")
def tokens_create(
    name: str,
    scope: Annotated[str, typer.Option(help="read, write or admin")] = "read",
    expires_in: Annotated[int | None, typer.Option(help="Seconds until it expires.")] = None,
    url: Url = DEFAULT_URL,
    token: Token = "",
) -> None:
    """Create an API token; it is printed once."""
    body: dict[str, Any] = {"name": name, "scope": scope}
    if expires_in:
        body["expires_in"] = expires_in
    res = _call("POST", url, token, "/workspace/tokens", json=body)
    console.print(res["token"])


def main() -> None:
    app()


if __name__ == "__main__":
    main()
