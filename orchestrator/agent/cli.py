"""The ``sluice agent`` command (mounted by :mod:`orchestrator.cli`)."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import Annotated

import typer


def agent(
    url: Annotated[str, typer.Option(envvar="SLUICE_URL", help="Service base URL.")],
    interface: Annotated[str, typer.Option(envvar="SLUICE_AGENT_INTERFACE")] = "eth0",
    ip: Annotated[
        str, typer.Option(envvar="SLUICE_AGENT_IP", help="The address this host protects.")
    ] = "",
    name: Annotated[str, typer.Option(envvar="SLUICE_AGENT_NAME")] = "",
    deploy_token: Annotated[
        str | None,
        typer.Option(envvar="SLUICE_DEPLOY_TOKEN", help="Token to register with (write scope)."),
    ] = None,
    state_dir: Annotated[Path, typer.Option(envvar="SLUICE_AGENT_STATE_DIR")] = Path(
        "/var/lib/sluice-agent"
    ),
    location: Annotated[str | None, typer.Option(envvar="SLUICE_AGENT_LOCATION")] = None,
    management: Annotated[
        list[str] | None,
        typer.Option(help="Address/prefix a firewall profile must never drop (repeatable)."),
    ] = None,
    pps_threshold: Annotated[
        float, typer.Option(help="Attack above this many packets/s.")
    ] = 50_000,
    bps_threshold: Annotated[float, typer.Option(help="Attack above this many bits/s.")] = 5e8,
    resolve_after: Annotated[float, typer.Option(help="Seconds below threshold to resolve.")] = 15,
    capture: Annotated[bool, typer.Option(help="Capture and upload a PCAP per attack.")] = True,
    capture_seconds: Annotated[float, typer.Option(help="Longest capture, seconds.")] = 10.0,
    capture_packets: Annotated[int, typer.Option(help="Most packets per capture.")] = 20_000,
    heartbeat_every: Annotated[float, typer.Option(hidden=True)] = 30.0,
    poll_wait: Annotated[float, typer.Option(hidden=True)] = 25.0,
    log_level: Annotated[str, typer.Option(envvar="SLUICE_LOG_LEVEL")] = "info",
) -> None:
    """Run the node agent: traffic metrics, attack detection and firewall jobs (needs root)."""
    import socket

    from orchestrator.agent.detect import Thresholds
    from orchestrator.agent.runner import Agent, AgentConfig
    from policies.errors import SluiceError

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    cfg = AgentConfig(
        url=url,
        state_dir=state_dir,
        interface=interface,
        name=name or socket.gethostname(),
        ip=ip or "0.0.0.0",  # noqa: S104 - only a placeholder the service refuses if left
        deploy_token=deploy_token,
        location=location,
        management=list(management or []),
        thresholds=Thresholds(pps=pps_threshold, bps=bps_threshold, resolve_after=resolve_after),
        heartbeat_every=heartbeat_every,
        capture=capture,
        capture_seconds=capture_seconds,
        capture_packets=capture_packets,
        poll_wait=poll_wait,
    )

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await Agent(cfg).run(stop)

    try:
        asyncio.run(main())
    except SluiceError as exc:
        typer.echo(f"sluice agent: {exc.message}", err=True)
        raise typer.Exit(2) from None
