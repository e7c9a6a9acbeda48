"""``sluice policy``: lint, explain and plan policy directories (a typer app).

The commands are thin: they read files, call :mod:`policies.schema`,
:mod:`policies.replay` and print. Exit codes: 0 fine, 1 invalid policy or input.

:func:`make_app` takes the checks only the service can make (adapter settings, ``${ENV}``
references): ``sluice policy`` passes the service's own, so lint accepts exactly what
``sluice serve`` starts with. ``python -m policies.cli`` checks the policy schema alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from policies.engine import Decision
from policies.errors import ValidationFailed
from policies.intents import canonical
from policies.replay import explain, plan, read_signals
from policies.schema import Check, Policy, load_policy

DirArg = Annotated[Path, typer.Argument(help="policy directory (*.yaml files)")]


AsJson = Annotated[bool, typer.Option("--json", help="print JSON")]


def _load(directory: Path, check: Check | None, *, as_json: bool = False) -> Policy:
    if not directory.is_dir():
        _fail(f"{directory}: no such policy directory", as_json)
    try:
        return load_policy(directory, check=check)
    except ValidationFailed as exc:
        _fail(str(exc), as_json, field=exc.field)


def _fail(message: str, as_json: bool, field: str | None = None) -> NoReturn:
    """Exit 1 with the reason on stderr (and, with --json, as JSON on stdout)."""
    typer.echo(f"error: {message}", err=True)
    if as_json:
        typer.echo(json.dumps({"ok": False, "error": message, "field": field}))
    raise typer.Exit(1)


def _print_decision(d: Decision) -> None:
    dry = " (dry run)" if d.dry_run else ""
    typer.echo(f"target {d.target}: {d.status}, tier {d.tier or '-'}{dry}")
    for line in d.explanation:
        typer.echo(f"  why: {line}")
    for r in d.rules:
        typer.echo(f"  announce via {r.adapter} ttl {r.ttl}: {canonical(r.intent)}")
        typer.echo(f"    reason: {r.reason}")
    for key in d.withdraw:
        typer.echo(f"  withdraw {key}")


def make_app(check: Check | None = None) -> typer.Typer:
    """The ``policy`` commands; ``check`` runs on every policy they load."""
    app = typer.Typer(help="Check a policy and see what it would do.", no_args_is_help=True)

    @app.command()
    def lint(directory: DirArg, as_json: AsJson = False) -> None:
        """Validate a policy directory as `sluice serve` does; errors name file, line, field."""
        policy = _load(directory, check, as_json=as_json)
        tiers = ", ".join(t.name for t in policy.escalation.tiers) or "none"
        if as_json:
            out = {
                "ok": True,
                "directory": str(directory),
                "tiers": [t.name for t in policy.escalation.tiers],
                "adapters": [a.name for a in policy.adapters],
                "thresholds": len(policy.thresholds),
                "allowlist": len(policy.allowlist),
            }
            typer.echo(json.dumps(out, indent=2))
            return
        typer.echo(
            f"ok: {directory}: tiers {tiers}; {len(policy.adapters)} adapter(s), "
            f"{len(policy.thresholds)} per-host threshold(s), {len(policy.allowlist)} "
            f"allowlist entr{'y' if len(policy.allowlist) == 1 else 'ies'}"
        )

    @app.command("explain")
    def explain_cmd(
        directory: DirArg,
        signal: Annotated[Path, typer.Option(help="JSON or YAML file with one signal")],
        as_json: AsJson = False,
    ) -> None:
        """What the policy decides for one signal (assuming it lasted past the hold-down)."""
        policy = _load(directory, None, as_json=as_json)  # needs no adapter nor secret
        try:
            signals = read_signals(signal)
        except ValidationFailed as exc:
            _fail(str(exc), as_json)
        if len(signals) != 1:
            _fail(f"{signal}: expected one signal, found {len(signals)}", as_json)
        decision = explain(policy, signals[0][1])
        if as_json:
            typer.echo(json.dumps(decision.to_dict(), indent=2))
        else:
            _print_decision(decision)

    @app.command("plan")
    def plan_cmd(
        directory: DirArg,
        signals: Annotated[Path, typer.Option(help="recorded signals (JSON or YAML list)")],
        current: Annotated[
            Path | None, typer.Option(help="the policy in force (default: an empty policy)")
        ] = None,
        as_json: AsJson = False,
    ) -> None:
        """What the policy in DIRECTORY would do differently from --current on the signals."""
        new = _load(directory, None, as_json=as_json)  # decisions need no adapter nor secret
        old = _load(current, None, as_json=as_json) if current is not None else Policy()
        try:
            recorded = read_signals(signals)
        except ValidationFailed as exc:
            _fail(str(exc), as_json)
        changes = plan(old, new, recorded)
        if as_json:
            out = {
                "signals": len(recorded),
                "changed": len(changes),
                "changes": [
                    {
                        "index": c.index,
                        "at": c.at,
                        "target": c.target,
                        "before": c.before.to_dict(),
                        "after": c.after.to_dict(),
                        "text": c.describe(),
                    }
                    for c in changes
                ],
            }
            typer.echo(json.dumps(out, indent=2))
            return
        for change in changes:
            typer.echo(change.describe())
        typer.echo(f"{len(changes)} of {len(recorded)} signal(s) decided differently")

    return app


app = make_app()


def main() -> None:  # pragma: no cover - entry point for `python -m policies.cli`
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
