"""``sluice lab up|status|down``: a demo topology of real BGP daemons to point Sluice at.

``up`` builds (as root) a speaker namespace (BIRD, FRR, GoBGP or ExaBGP) peered with BIRD
and FRR receivers, waits for the sessions, prints each node's sockets and the adapter
config to paste into Sluice's ``adapters.yaml``, and leaves everything running. The state
(namespaces, work directory, adapter config) goes to ``--state-dir`` (default
``/run/sluice-lab``, or ``$SLUICE_LAB_STATE_DIR``), so ``status`` and ``down`` work from
another shell. ``down`` kills every process in the lab's namespaces, deletes them and
removes the work directory.

Run it as ``python -m labs.cli`` or, with the orchestrator installed, ``sluice lab``.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from labs.netns import Lab, LabError, destroy_from_state, list_netns
from labs.peers import Speaker
from labs.topology import RECEIVER_KINDS, SPEAKERS, build

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__.split("\n")[0])

StateDir = Annotated[
    Path,
    typer.Option("--state-dir", envvar="SLUICE_LAB_STATE_DIR", help="Where the lab's state lives."),
]
DEFAULT_STATE_DIR = Path("/run/sluice-lab")
SPEAKER_KINDS = ("bird", "frr", "gobgp", "exabgp")


def speaker_for(kind: str) -> Speaker:
    """The speaker kind by name; GoBGP and ExaBGP come from their own lab modules."""
    if kind in SPEAKERS:
        return SPEAKERS[kind]
    if kind == "gobgp":
        from labs.gobgp import GoBgpSpeaker

        return GoBgpSpeaker()
    if kind == "exabgp":
        from labs.exabgp import ExaBgpSpeaker

        return ExaBgpSpeaker()
    raise typer.BadParameter(f"unknown speaker {kind!r} (one of {', '.join(SPEAKER_KINDS)})")


def _state_file(state_dir: Path) -> Path:
    return state_dir / "state.json"


def _load(state_dir: Path) -> dict[str, Any] | None:
    path = _state_file(state_dir)
    if not path.exists():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _print_up(state: dict[str, Any]) -> None:
    topo = state["topology"]
    typer.echo(f"lab {topo['lab_id']} is up (work directory {topo['workdir']})\n")
    typer.echo("speaker:")
    for k, v in topo["speaker"].items():
        typer.echo(f"  {k}: {v}")
    for name, rx in topo["receivers"].items():
        typer.echo(f"receiver {name}:")
        for k, v in rx.items():
            typer.echo(f"  {k}: {v}")
    typer.echo("\nadd to your policy's adapters.yaml:\n")
    typer.echo(yaml.safe_dump({"adapters": [state["adapter"]]}, sort_keys=False).rstrip())
    typer.echo(
        "\nand let the service reach the lab's sockets and files:\n\n"
        f"  SLUICE_ADAPTER_DIRS={topo['workdir']}"
    )
    typer.echo("\ntear it down with: sluice lab down")


@app.command()
def up(
    speaker: Annotated[
        str, typer.Option(help=f"Speaker daemon: {', '.join(SPEAKER_KINDS)}.")
    ] = "bird",
    receivers: Annotated[
        str, typer.Option(help="Comma-separated receiver kinds (bird, frr).")
    ] = ",".join(RECEIVER_KINDS),
    state_dir: StateDir = DEFAULT_STATE_DIR,
    as_json: Annotated[bool, typer.Option("--json", help="Print the state as JSON.")] = False,
) -> None:
    """Build the demo topology and leave it running."""
    if os.geteuid() != 0:
        typer.echo("sluice lab needs root (network namespaces)", err=True)
        raise typer.Exit(2)
    if _load(state_dir) is not None:
        typer.echo(f"a lab is already up (state in {state_dir}); run `down` first", err=True)
        raise typer.Exit(1)
    kinds = [k.strip() for k in receivers.split(",") if k.strip()]
    lab = Lab()
    try:
        topo = build(lab, speaker_for(speaker), kinds)
        adapter = topo.speaker.adapter_config(f"lab-{speaker}")
        state = {"lab": lab.state(), "topology": topo.describe(), "adapter": adapter}
        state_dir.mkdir(parents=True, exist_ok=True)
        _state_file(state_dir).write_text(json.dumps(state, indent=2))
    except (LabError, OSError) as exc:
        lab.close()
        typer.echo(f"lab failed: {exc}", err=True)
        raise typer.Exit(1) from None
    except BaseException:
        lab.close()
        raise
    lab.detach()  # keep it running after this process exits
    if as_json:
        typer.echo(json.dumps(state, indent=2))
    else:
        _print_up(state)


@app.command()
def status(
    state_dir: StateDir = DEFAULT_STATE_DIR,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show the running lab and ask its adapter for a health check."""
    state = _load(state_dir)
    if state is None:
        typer.echo(json.dumps({"lab_id": None}) if as_json else "no lab is up")
        raise typer.Exit(1)
    present = set(list_netns())
    namespaces = {ns: ns in present for ns in state["lab"]["namespaces"]}
    health: dict[str, Any]
    try:
        from adapters.access import HostAccess
        from adapters.base import AdapterConfig, Registry

        access = HostAccess(allowed_dirs=(Path(state["lab"]["workdir"]),))
        adapter = Registry(access=access).create(AdapterConfig(**state["adapter"]))
        health = asyncio.run(adapter.check()).to_dict()
    except Exception as exc:  # status reports whatever went wrong
        health = {"ok": False, "detail": str(exc)}
    out = {"lab_id": state["lab"]["lab_id"], "namespaces": namespaces, "adapter_health": health}
    if as_json:
        typer.echo(json.dumps(out, indent=2))
        return
    typer.echo(f"lab {out['lab_id']}")
    for ns, ok in namespaces.items():
        typer.echo(f"  namespace {ns}: {'present' if ok else 'MISSING'}")
    typer.echo(f"  adapter {state['adapter']['name']}: {json.dumps(health)}")


@app.command()
def down(
    state_dir: StateDir = DEFAULT_STATE_DIR,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Kill the lab's processes, delete its namespaces and work directory."""
    state = _load(state_dir)
    if state is None:
        typer.echo(json.dumps({"down": None}) if as_json else "no lab is up")
        return
    destroy_from_state(state["lab"])
    _state_file(state_dir).unlink(missing_ok=True)
    lab_id = state["lab"]["lab_id"]
    typer.echo(json.dumps({"down": lab_id}) if as_json else f"lab {lab_id} is down")


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
