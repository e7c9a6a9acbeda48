"""The ``sluice`` command line.

``sluice serve`` runs the service. The other commands talk to a running service's REST API
(``--url``/``SLUICE_URL``, ``--token``/``SLUICE_TOKEN``), except those given
``--database`` (``audit verify``, ``tokens create``) and ``secrets rotate``, which work
on the store directly, with the keys from the data directory or the environment.
"""

from __future__ import annotations

import importlib
import json
import os
from datetime import datetime
from importlib.metadata import version as package_version
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from orchestrator.agent.cli import agent as agent_command

if TYPE_CHECKING:
    from orchestrator.settings import Settings

app = typer.Typer(help="Sluice: BGP mitigation orchestration.", no_args_is_help=True)
rules_app = typer.Typer(help="Mitigation rules.", no_args_is_help=True)
adapters_app = typer.Typer(help="Adapters.", no_args_is_help=True)
audit_app = typer.Typer(help="The hash-chained audit log.", no_args_is_help=True)
tokens_app = typer.Typer(help="API tokens (admin scope).", no_args_is_help=True)
incidents_app = typer.Typer(
    help="Incidents: attacks as the detectors report them.", no_args_is_help=True
)
app.add_typer(rules_app, name="rules")
app.add_typer(adapters_app, name="adapters")
app.add_typer(audit_app, name="audit")
app.add_typer(tokens_app, name="tokens")
app.add_typer(incidents_app, name="incidents")

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


def _service_check(policy: Any, settings: Settings | None = None) -> None:
    """What `serve` checks beyond the schema: ${ENV} references and adapter settings.

    Adapters are built under what the service settings (``SLUICE_ADAPTER_DIRS``, ...)
    allow on the host, so `lint` and `serve` with the same environment agree.
    """
    from adapters.base import Registry
    from orchestrator.policy_check import adapter_check
    from orchestrator.settings import Settings

    access = (settings or Settings()).host_access()
    adapter_check(Registry(access=access))(policy)


def _policy_app() -> typer.Typer:
    from orchestrator.policy_export import export_command
    from policies.cli import make_app

    sub = make_app(check=_service_check)
    sub.command("export")(export_command)
    return sub


app.add_typer(
    _policy_app(), name="policy", help="Lint, explain, plan and export policy directories."
)
_mount_optional("lab", "labs.cli", "app", "Real BGP peers in network namespaces to try Sluice.")
app.command("agent")(agent_command)


def _version(value: bool) -> None:
    if value:
        print(f"sluice {package_version('sluice')}")
        raise typer.Exit()


@app.callback()
def _root(
    _version_flag: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Sluice: BGP mitigation orchestration."""


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
    from orchestrator import logfmt
    from orchestrator.settings import Settings

    with logfmt.configured(log_level):
        _serve(
            Settings(
                data_dir=data_dir,
                policy_dir=policy_dir,
                database_url=database_url,
                host=host,
                port=port,
            ),
            log_level,
        )


def _serve(settings: Settings, log_level: str) -> None:
    import uvicorn

    from orchestrator.api import server
    from orchestrator.api.app import create_app
    from orchestrator.instance import InstanceLock
    from orchestrator.service import Service
    from policies.errors import SluiceError
    from policies.schema import load_policy

    policy_dir = settings.policy_dir
    os.umask(0o077)  # files the service creates (store, keys, anchor) are its own alone
    # one service per data directory: taken before the store, the policy or any speaker is
    # touched, so a second `serve` changes nothing (the kernel drops it when we die)
    lock = InstanceLock(settings.data_dir)
    try:
        lock.acquire()
        server.choices(settings)  # the HTTP parser and loop asked for are installed
        # the policy is checked as `sluice policy lint` checks it, adapters and ${ENV} too
        policy = (
            load_policy(policy_dir, check=lambda p: _service_check(p, settings))
            if policy_dir
            else None
        )
        service = Service(settings, policy=policy)
    except SluiceError as exc:
        lock.release()
        err.print(f"[red]cannot start:[/red] {exc.message}", soft_wrap=True, markup=True)
        raise typer.Exit(2) from None
    try:
        uvicorn.Server(server.config(create_app(service), settings, log_level=log_level)).run()
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

STATE_STYLE = {
    "active": "green",
    "pending": "yellow",
    "withdrawing": "yellow",
    "failed": "bold red",
    "suspended": "bold red",
    "withdrawn": "dim",
    "expired": "dim",
    "open": "bold red",
    "mitigating": "yellow",
    "resolved": "green",
    "ok": "green",
    "connected": "green",
    "degraded": "yellow",
    "down": "bold red",
    "error": "bold red",
    "enabled": "green",
    "disabled": "dim",
    "refused": "bold red",
    "revoked": "dim",
}


def _call(method: str, url: str, token: str, path: str, **kwargs: Any) -> dict[str, Any]:
    """One API call; every way it can fail ends the command with a one-line reason."""
    if not token:
        err.print("[red]no API token:[/red] pass --token or set SLUICE_TOKEN")
        raise typer.Exit(2)
    try:
        resp = httpx.request(
            method,
            url.rstrip("/") + "/api/v1" + path,
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
            **kwargs,
        )
    except httpx.HTTPError as exc:
        err.print(f"[red]cannot reach the service at {url}:[/red] {exc or type(exc).__name__}")
        raise typer.Exit(2) from None
    try:
        body: dict[str, Any] = resp.json()
    except ValueError:
        err.print(f"[red]{resp.status_code} from {url}: not a Sluice answer (no JSON)[/red]")
        raise typer.Exit(1) from None
    if not body.get("ok"):
        e = body.get("error") or {}
        field = f" ({e['field']})" if e.get("field") else ""
        err.print(f"[red]{e.get('code', resp.status_code)}{field}:[/red] {e.get('message', '')}")
        raise typer.Exit(1)
    return body


def _emit_json(body: object) -> None:
    """Plain JSON on stdout, never wrapped or coloured: safe to pipe into jq."""
    print(json.dumps(body, indent=2))


def _when(value: str | None) -> str:
    """A timestamp as compact local time (``12-01 19:40:05``); ``-`` for none."""
    if not value:
        return "-"
    try:
        return datetime.fromisoformat(value).astimezone().strftime("%m-%d %H:%M:%S")
    except ValueError:
        return value


def _styled(state: str) -> str:
    style = STATE_STYLE.get(state)
    return f"[{style}]{state}[/{style}]" if style else state


def _rules_table(rules: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title)
    for col in ("id", "state", "type", "target", "adapter", "expires", "origin", "intent"):
        table.add_column(col, overflow="fold")
    for r in rules:
        state = _styled(r["state"]) + (" (dry-run)" if r["dry_run"] else "")
        table.add_row(
            str(r["id"]),
            state,
            r["intent_type"],
            r["target_ip"],
            r["adapter_name"],
            _when(r["expires_at"]) if r["expires_at"] else "never",
            r["origin"],
            r["intent"],
        )
    return table


def _adapter_id(ref: str, url: str, token: str) -> int:
    """An adapter named by id or by name."""
    if ref.isdigit():
        return int(ref)
    for a in _call("GET", url, token, "/mitigation/adapters")["adapters"]:
        if a["name"] == ref:
            return int(a["id"])
    err.print(f"[red]adapter_not_found:[/red] no adapter is named {ref!r}")
    raise typer.Exit(1)


def _rule_outcome(rule: dict[str, Any]) -> None:
    """Exit non-zero when the rule did not make it (failed), after printing it."""
    if rule["state"] == "failed":
        raise typer.Exit(1)


# ---------------------------------------------------------------- rules


@rules_app.command("list")
def rules_list(url: Url = DEFAULT_URL, token: Token = "", as_json: AsJson = False) -> None:
    """Rules that are live (pending, active, failed, withdrawing)."""
    body = _call("GET", url, token, "/mitigation/rules")
    if as_json:
        _emit_json(body)
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
        _emit_json(body)
        return
    console.print(_rules_table(body["rules"], f"history ({body['total']} rules)"))


@rules_app.command("show")
def rules_show(
    rule_id: int, url: Url = DEFAULT_URL, token: Token = "", as_json: AsJson = False
) -> None:
    """One rule with its event history."""
    body = _call("GET", url, token, f"/mitigation/rules/{rule_id}")
    if as_json:
        _emit_json(body)
        return
    r = body["rule"]
    console.print(f"[bold]rule {r['id']}[/bold] {_styled(r['state'])}: {r['intent']}")
    rows = [
        ("adapter", f"{r['adapter_name']} ({r['adapter_id']})"),
        ("origin", f"{r['origin']}" + (f", by {r['created_by']}" if r.get("created_by") else "")),
        ("reason", r["reason"] or "-"),
        ("why", r.get("explanation") or "-"),
        ("incident", r.get("incident_id") or "-"),
        ("created", _when(r["created_at"])),
        ("active since", _when(r.get("activated_at"))),
        ("expires", _when(r["expires_at"]) if r["expires_at"] else "never"),
        ("ended", _when(r.get("ended_at"))),
        ("error", r.get("error") or "-"),
    ]
    for label, value in rows:
        console.print(f"  {label:<13}{value}", highlight=False)
    events = Table(title="events")
    for col in ("at", "event", "detail"):
        events.add_column(col, overflow="fold")
    for e in r.get("events", []):
        events.add_row(_when(e["at"]), _styled(e["event"]), e.get("detail") or "")
    console.print(events)


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
    """Announce a manual rule; exits 1 if it ends failed."""
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
    r = res["rule"]
    if as_json:
        _emit_json(res)
    else:
        note = " (already existed; expiry extended)" if res["deduplicated"] else ""
        console.print(
            f"rule {r['id']}: {_styled(r['state'])}{note}: {r['intent']} via {r['adapter_name']}"
        )
        if r.get("error"):
            console.print(f"[yellow]adapter said:[/yellow] {r['error']}")
    _rule_outcome(r)


@rules_app.command("withdraw")
def rules_withdraw(
    rule_id: int,
    reason: str = "",
    url: Url = DEFAULT_URL,
    token: Token = "",
    as_json: AsJson = False,
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
    if as_json:
        _emit_json(res)
    else:
        console.print(f"rule {r['id']}: {_styled(r['state'])}")
    _rule_outcome(r)


# ---------------------------------------------------------------- adapters


@adapters_app.command("list")
def adapters_list(url: Url = DEFAULT_URL, token: Token = "", as_json: AsJson = False) -> None:
    """Adapters with their status and capabilities."""
    body = _call("GET", url, token, "/mitigation/adapters")
    if as_json:
        _emit_json(body)
        return
    table = Table(title="adapters")
    for col in ("id", "name", "type", "status", "capabilities", "endpoint", "managed by"):
        table.add_column(col, overflow="fold")
    for a in body["adapters"]:
        table.add_row(
            str(a["id"]),
            a["name"],
            a["adapter_type"],
            _styled(a["status"]),
            ", ".join(a["capabilities"]),
            a["endpoint"],
            a["managed_by"],
        )
    console.print(table)


@adapters_app.command("test")
def adapters_test(
    adapter: Annotated[str, typer.Argument(help="Adapter id or name.")],
    url: Url = DEFAULT_URL,
    token: Token = "",
    as_json: AsJson = False,
) -> None:
    """Check an adapter's connectivity, auth and latency; exits 1 when it is not healthy."""
    body = _call(
        "POST", url, token, f"/mitigation/adapters/{_adapter_id(adapter, url, token)}/test"
    )
    result: dict[str, Any] = body["test"]
    healthy = bool(result["ok"])
    if as_json:
        _emit_json(body)
    else:
        verdict = "[green]ok[/green]" if healthy else "[bold red]not healthy[/bold red]"
        console.print(f"adapter {adapter}: {verdict}")
        latency = result.get("latency_ms")
        console.print(f"  latency      {'-' if latency is None else f'{latency} ms'}")
        console.print(f"  detail       {result.get('detail') or '-'}", highlight=False)
        for peer, state in (result.get("sessions") or {}).items():
            console.print(f"  session      {peer}: {_styled(str(state))}", highlight=False)
    if not healthy:
        raise typer.Exit(1)


# ---------------------------------------------------------------- incidents


@incidents_app.command("list")
def incidents_list(
    status: Annotated[str | None, typer.Option(help="Only incidents in this state.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100)] = 50,
    url: Url = DEFAULT_URL,
    token: Token = "",
    as_json: AsJson = False,
) -> None:
    """Incidents, newest first."""
    params: dict[str, Any] = {"limit": limit}
    if status:
        params["status"] = status
    body = _call("GET", url, token, "/incidents", params=params)
    if as_json:
        _emit_json(body)
        return
    table = Table(title=f"{len(body['incidents'])} incidents")
    for col in ("id", "status", "target", "family", "severity", "signals", "opened", "updated"):
        table.add_column(col, overflow="fold")
    for i in body["incidents"]:
        table.add_row(
            i["id"],
            _styled(i["status"]),
            i["target_ip"],
            i.get("attack_family") or "-",
            i.get("severity") or "-",
            str(i.get("signals", "")),
            _when(i.get("opened_at")),
            _when(i.get("updated_at")),
        )
    console.print(table)


@incidents_app.command("show")
def incidents_show(
    incident_id: str, url: Url = DEFAULT_URL, token: Token = "", as_json: AsJson = False
) -> None:
    """One incident with each decision and its explanation."""
    body = _call("GET", url, token, f"/incidents/{incident_id}")
    if as_json:
        _emit_json(body)
        return
    i = body["incident"]
    console.print(
        f"[bold]incident {i['id']}[/bold] {_styled(i['status'])}: {i['target_ip']} "
        f"{i.get('attack_family') or ''} {i.get('severity') or ''}"
    )
    console.print(
        f"  opened {_when(i.get('opened_at'))}, updated {_when(i.get('updated_at'))}, "
        f"resolved {_when(i.get('resolved_at'))}; live rules: "
        f"{', '.join(str(r) for r in i.get('live_rules', [])) or 'none'}",
        highlight=False,
    )
    decisions = Table(title="decisions")
    for col in ("at", "status", "tier", "why", "rules"):
        decisions.add_column(col, overflow="fold")
    for d in i.get("decisions", []):
        decisions.add_row(
            _when(d.get("at")),
            str(d.get("status", "")),
            str(d.get("tier") or "-"),
            str(d.get("explanation") or ""),
            ", ".join(str(x) for x in d.get("rules") or []),
        )
    console.print(decisions)


@incidents_app.command("resolve")
def incidents_resolve(
    incident_id: str, url: Url = DEFAULT_URL, token: Token = "", as_json: AsJson = False
) -> None:
    """Resolve an incident (its live rules are withdrawn unless the policy keeps them)."""
    body = _call("POST", url, token, f"/incidents/{incident_id}/resolve")
    if as_json:
        _emit_json(body)
        return
    i = body["incident"]
    console.print(f"incident {i['id']}: {_styled(i['status'])}")


# ---------------------------------------------------------------- audit and tokens


DataDir = Annotated[
    Path,
    typer.Option(
        "--data-dir",
        envvar="SLUICE_DATA_DIR",
        help="The service's data directory (audit key and anchor, secrets key).",
    ),
]
Database = Annotated[
    str | None,
    typer.Option(
        "--database",
        envvar="SLUICE_DATABASE_URL",
        help="Database URL; default: the SQLite file in the data directory.",
    ),
]


def _offline_settings(data_dir: Path, database: str | None) -> Any:
    from orchestrator.settings import Settings

    return Settings(data_dir=data_dir, database_url=database)


def _offline_audit(settings: Any, *, create: bool) -> Any:
    from orchestrator.store.audit import ANCHOR_FILE, Anchor, AuditKeyError, AuditLog, load_key

    env = settings.audit_key.get_secret_value() if settings.audit_key else None
    try:
        key = load_key(settings.data_dir, env, create=create)
    except AuditKeyError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    # an offline tool never creates a missing anchor (the next service start records it)
    return AuditLog(key, Anchor(settings.data_dir / ANCHOR_FILE, create=False))


@audit_app.command("verify")
def audit_verify(
    database: Annotated[
        str | None,
        typer.Option(help="Check this database URL directly instead of asking the service."),
    ] = None,
    data_dir: DataDir = Path("./var"),
    url: Url = DEFAULT_URL,
    token: Token = "",
    as_json: AsJson = False,
) -> None:
    """Verify the keyed audit chain and its anchored head; report the first problem.

    Exit status: 0 intact, 3 entry modified, 4 entries deleted, 5 truncated, 6 re-chained,
    7 wrong key, 8 anchor missing, 9 anchor unreadable, 10 never keyed (legacy log).
    """
    from orchestrator.store.audit import EXIT_CODES, Problem

    if database:
        from orchestrator.store.audit import verify
        from orchestrator.store.db import make_engine

        audit = _offline_audit(_offline_settings(data_dir, database), create=False)
        engine = make_engine(database)
        try:
            with engine.connect() as conn:
                res = verify(conn, audit.key, audit.anchor)
        finally:
            engine.dispose()
        valid, entries, bad, problem, code = (
            res.ok,
            res.entries,
            res.first_bad_id,
            res.problem,
            str(res.code),
        )
    else:
        body = _call("GET", url, token, "/audit/verify")
        valid, entries, bad, problem, code = (
            body["valid"],
            body["entries"],
            body["first_bad_id"],
            body["problem"],
            body.get("code") or ("ok" if body["valid"] else "entry_modified"),
        )
    if as_json:
        _emit_json(
            {
                "valid": valid,
                "code": code,
                "entries": entries,
                "first_bad_id": bad,
                "problem": problem or None,
            }
        )
    elif valid:
        console.print(f"audit log intact: {entries} entries")
    else:
        where = f" at entry {bad}" if bad is not None else ""
        err.print(f"[red]audit log {code}{where}:[/red] {problem}")
    if not valid:
        raise typer.Exit(EXIT_CODES.get(Problem(code), 1) if code in set(Problem) else 1)


@tokens_app.command("create")
def tokens_create(
    name: str,
    scope: Annotated[str, typer.Option(help="read, write or admin")] = "read",
    expires_in: Annotated[int | None, typer.Option(help="Seconds until it expires.")] = None,
    database: Annotated[
        str | None,
        typer.Option(
            help="Create it straight in this database (offline; the recovery when no admin "
            "token is left). The audit key is read from --data-dir or SLUICE_AUDIT_KEY."
        ),
    ] = None,
    data_dir: DataDir = Path("./var"),
    url: Url = DEFAULT_URL,
    token: Token = "",
    as_json: AsJson = False,
) -> None:
    """Create an API token; it is printed once."""
    if database:
        from orchestrator.store.db import make_engine, migrate
        from orchestrator.tokens import TokenStore
        from policies.errors import SluiceError

        audit = _offline_audit(_offline_settings(data_dir, database), create=False)
        engine = make_engine(database)
        audit.attach(engine)
        try:
            migrate(engine)
            made, info = TokenStore(engine, audit).create(
                name, scope, actor="cli", expires_in=expires_in
            )
        except SluiceError as exc:
            err.print(f"[red]{exc.code}:[/red] {exc.message}")
            raise typer.Exit(1) from None
        finally:
            engine.dispose()
        if as_json:
            _emit_json(
                {
                    "ok": True,
                    "token": made,
                    "id": info.id,
                    "name": info.name,
                    "scope": info.scope,
                    "expires_at": info.expires_at.isoformat() if info.expires_at else None,
                }
            )
            return
        err.print(f"created token {info.id} ({info.scope}); shown only now:")
        print(made)
        return
    body: dict[str, Any] = {"name": name, "scope": scope}
    if expires_in:
        body["expires_in"] = expires_in
    res = _call("POST", url, token, "/workspace/tokens", json=body)
    if as_json:
        _emit_json(res)
        return
    err.print(f"created token {res['id']} {res['name']} ({res['role']}); shown only now:")
    print(res["token"])


@tokens_app.command("list")
def tokens_list(url: Url = DEFAULT_URL, token: Token = "", as_json: AsJson = False) -> None:
    """API tokens (never their secret): id, name, role, expiry, state."""
    body = _call("GET", url, token, "/workspace/tokens")
    if as_json:
        _emit_json(body)
        return
    table = Table(title=f"{len(body['tokens'])} tokens")
    cols = ("id", "name", "role", "created", "expires", "state")
    for col in cols:
        table.add_column(col, overflow="fold")
    for t in body["tokens"]:
        state = "revoked" if t.get("revoked") else "active"
        table.add_row(
            str(t["id"]),
            str(t["name"]),
            str(t.get("role") or t.get("scope")),
            _when(t.get("created_at")),
            _when(t.get("expires_at")) if t.get("expires_at") else "never",
            _styled(state),
        )
    console.print(table)


@tokens_app.command("revoke")
def tokens_revoke(
    ref: Annotated[str, typer.Argument(help="Token id or name.")],
    url: Url = DEFAULT_URL,
    token: Token = "",
    as_json: AsJson = False,
) -> None:
    """Revoke an API token, named by id or by name."""
    if ref.isdigit():
        token_id = int(ref)
    else:
        live = [
            t
            for t in _call("GET", url, token, "/workspace/tokens")["tokens"]
            if t["name"] == ref and not t.get("revoked")
        ]
        if len(live) != 1:
            why = "no live token" if not live else f"{len(live)} live tokens (give the id)"
            err.print(f"[red]token_not_found:[/red] {why} named {ref!r}")
            raise typer.Exit(1)
        token_id = int(live[0]["id"])
    body = _call("DELETE", url, token, f"/workspace/tokens/{token_id}")
    if as_json:
        _emit_json(body)
        return
    console.print(f"token {token_id} revoked")


# ---------------------------------------------------------------- operators

operators_app = typer.Typer(
    help="Operator accounts of the dashboard (admin scope).", no_args_is_help=True
)
app.add_typer(operators_app, name="operators")
Password = Annotated[
    str,
    typer.Option(
        prompt=True,
        hide_input=True,
        confirmation_prompt=True,
        envvar="SLUICE_OPERATOR_PASSWORD",
        help="The password (asked for when not given; at least 12 characters).",
    ),
]


def _operator_line(o: dict[str, Any]) -> str:
    state = _styled("disabled") if o["disabled"] else _styled("enabled")
    return f"operator {o['username']}: {o['role']}, {state}"


@operators_app.command("list")
def operators_list(url: Url = DEFAULT_URL, token: Token = "", as_json: AsJson = False) -> None:
    """Operator accounts with their role and last login."""
    body = _call("GET", url, token, "/workspace/operators")
    if as_json:
        _emit_json(body)
        return
    table = Table(title=f"{len(body['operators'])} operators")
    for col in ("id", "username", "role", "state", "created", "last login"):
        table.add_column(col, overflow="fold")
    for o in body["operators"]:
        table.add_row(
            str(o["id"]),
            o["username"],
            o["role"],
            _styled("disabled" if o["disabled"] else "enabled"),
            _when(o["created_at"]),
            _when(o["last_login_at"]),
        )
    console.print(table)


@operators_app.command("create")
def operators_create(
    username: str,
    password: Password,
    role: Annotated[str, typer.Option(help="viewer, operator or admin")] = "viewer",
    url: Url = DEFAULT_URL,
    token: Token = "",
    as_json: AsJson = False,
) -> None:
    """Create an operator account."""
    body = _call(
        "POST",
        url,
        token,
        "/workspace/operators",
        json={"username": username, "password": password, "role": role},
    )
    if as_json:
        _emit_json(body)
        return
    o = body["operator"]
    console.print(f"created operator {o['username']} ({o['role']})")


def _change_operator(
    username: str, change: dict[str, Any], url: str, token: str, as_json: bool
) -> None:
    body = _call("PATCH", url, token, f"/workspace/operators/{username}", json=change)
    if as_json:
        _emit_json(body)
        return
    console.print(_operator_line(body["operator"]))


@operators_app.command("set-role")
def operators_set_role(
    username: str,
    role: Annotated[str, typer.Argument(help="viewer, operator or admin")],
    url: Url = DEFAULT_URL,
    token: Token = "",
    as_json: AsJson = False,
) -> None:
    """Change an operator's role (its login sessions end)."""
    _change_operator(username, {"role": role}, url, token, as_json)


@operators_app.command("reset-password")
def operators_reset_password(
    username: str,
    password: Password,
    url: Url = DEFAULT_URL,
    token: Token = "",
    as_json: AsJson = False,
) -> None:
    """Set a new password for an operator (its login sessions end)."""
    _change_operator(username, {"password": password}, url, token, as_json)


@operators_app.command("disable")
def operators_disable(
    username: str, url: Url = DEFAULT_URL, token: Token = "", as_json: AsJson = False
) -> None:
    """Disable an operator (its sessions end; the last enabled admin stays)."""
    _change_operator(username, {"disabled": True}, url, token, as_json)


@operators_app.command("enable")
def operators_enable(
    username: str, url: Url = DEFAULT_URL, token: Token = "", as_json: AsJson = False
) -> None:
    """Enable a disabled operator again."""
    _change_operator(username, {"disabled": False}, url, token, as_json)


# ---------------------------------------------------------------- secrets at rest

secrets_app = typer.Typer(help="Adapter secrets encrypted at rest.", no_args_is_help=True)
app.add_typer(secrets_app, name="secrets")


@secrets_app.command("new-key")
def secrets_new_key(as_json: AsJson = False) -> None:
    """Print a fresh Fernet key (for SLUICE_SECRET_KEY)."""
    from cryptography.fernet import Fernet

    key = Fernet.generate_key().decode()
    if as_json:
        _emit_json({"key": key})
        return
    print(key)


@secrets_app.command("rotate")
def secrets_rotate(
    data_dir: DataDir = Path("./var"), database: Database = None, as_json: AsJson = False
) -> None:
    """Re-encrypt every stored secret under a new key (refused while the service runs).

    With the key file (data_dir/secrets.key) a new key is generated: it is added in front
    of the old one, every secret is re-encrypted, then the old key is dropped from the
    file. A crash at any point leaves a file that opens every secret. With
    SLUICE_SECRET_KEY="new,old" every secret is re-encrypted under the first key; then set
    SLUICE_SECRET_KEY to the new key alone.
    """
    from orchestrator.instance import InstanceLock
    from orchestrator.store.crypto import key_file, load_keys
    from policies.errors import SluiceError

    settings = _offline_settings(data_dir, database)
    env = settings.secret_key.get_secret_value() if settings.secret_key else None
    path = key_file(settings.data_dir)
    lock = InstanceLock(settings.data_dir)  # the service must not write secrets meanwhile
    try:
        lock.acquire()
        old = load_keys(settings.data_dir, env, create=False)
    except SluiceError as exc:
        lock.release()
        err.print(f"[red]{exc.message}[/red]")
        raise typer.Exit(2) from None
    try:
        _rotate(settings, env, path, old, as_json=as_json)
    finally:
        lock.release()


def _rotate(settings: Any, env: str | None, path: Path, old: list[Any], *, as_json: bool) -> None:
    from cryptography.fernet import Fernet

    from orchestrator.channels.service import reseal_channel_secrets
    from orchestrator.cluster import write
    from orchestrator.hub import reseal_secrets
    from orchestrator.store.audit import write_private
    from orchestrator.store.crypto import SecretBox, SecretKeyError
    from orchestrator.store.db import make_engine, migrate

    audit = _offline_audit(settings, create=False)
    new_key = None
    if env is None:
        new_key = Fernet.generate_key().decode()
        write_private(path, new_key + "\n" + path.read_text())
        keys = [Fernet(new_key.encode()), *old]
    else:
        keys = old
    engine = make_engine(settings.sqlalchemy_url())
    audit.attach(engine)
    try:
        migrate(engine)
        # under the writer lock on PostgreSQL: the audit head is shared with running instances
        with write(engine) as conn:
            n = reseal_secrets(conn, SecretBox(keys))
            n += reseal_channel_secrets(conn, SecretBox(keys))  # alert channels' secrets too
            audit.append(
                conn, actor="cli", action="secrets.rotate", target="secrets", detail={"rows": n}
            )
    except SecretKeyError as exc:
        err.print(f"[red]{exc}; nothing was changed[/red]")
        raise typer.Exit(1) from None
    finally:
        engine.dispose()
    if new_key is not None:
        write_private(path, new_key + "\n")
    if as_json:
        _emit_json({"resealed": n, "key_file": str(path) if new_key is not None else None})
    elif new_key is not None:
        console.print(
            f"re-encrypted the secrets of {n} adapters and alert channels; "
            f"{path} holds the new key only"
        )
    else:
        console.print(
            f"re-encrypted the secrets of {n} adapters and alert channels under the first key of "
            "SLUICE_SECRET_KEY; remove the old keys from it now"
        )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
