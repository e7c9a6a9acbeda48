"""What the service lets adapters touch on its own host: programs, files, sockets, egress.

Sluice runs as root beside the routers, and adapter settings come from the API and from
policy files, so nothing an adapter setting says may choose a program to run or reach a
file outside what the service's own configuration allows. One :class:`HostAccess`, built
from the service settings, is handed to every adapter when it is created (see
:func:`adapters.base.validate_settings`):

* ``programs``: the executables adapters run (today FRR's ``vtysh``), by role. They come
  from the service configuration only; an adapter setting naming a program is refused.
* ``allowed_dirs``: files and unix sockets named in adapter settings must resolve
  (symlinks followed) inside one of these directories; relative paths and ``..`` are
  refused outright. ``denied_dirs`` (the service's own data and policy directories) are
  refused even when inside an allowed one.
* ``egress``: the :class:`~adapters.egress.EgressPolicy` every outbound HTTP adapter
  connects through.
* ``speakers``: the :class:`~adapters.speakers.SpeakerEndpoints` a BGP speaker's API may
  be reached on over TCP (gobgp's ``host:port`` gRPC endpoint; default loopback port
  50051 only). A speaker API on a unix socket is a file, under ``allowed_dirs``.

Paths are checked when the settings are validated (the error names the field) and again
just before each use (:meth:`HostAccess.check_path`), so a symlink swapped in afterwards
does not lead outside either.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, ValidationInfo

from adapters.egress import DEFAULT_EGRESS, EgressPolicy
from adapters.speakers import DEFAULT_SPEAKERS, SpeakerEndpoints

DEFAULT_DIRS: tuple[Path, ...] = tuple(
    Path(p)
    for p in (
        "/run/bird",
        "/run/frr",
        "/run/exabgp",
        "/run/gobgp",
        "/run/sluice",
        "/var/lib/sluice-adapters",  # not in the data directory: that one is always refused
        "/var/log/sluice",
        "/etc/sluice/ca",  # CA files for HTTP adapters (not /etc/sluice: secrets live there)
    )
)
DEFAULT_PROGRAMS: Mapping[str, str] = {"vtysh": "/usr/bin/vtysh"}
# Adapter setting names that would choose a program; refused for every adapter type.
PROGRAM_SETTINGS = frozenset(
    {"vtysh", "birdc", "gobgp", "exabgp", "program", "command", "executable", "binary", "cli"}
)


class PathRefused(ValueError):
    """A path the service configuration does not allow; the message says why."""

    code = "path_not_allowed"


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


@dataclass(frozen=True, slots=True)
class HostAccess:
    allowed_dirs: tuple[Path, ...] = DEFAULT_DIRS
    denied_dirs: tuple[Path, ...] = ()
    programs: Mapping[str, str] = field(default_factory=lambda: DEFAULT_PROGRAMS)
    egress: EgressPolicy = DEFAULT_EGRESS
    speakers: SpeakerEndpoints = DEFAULT_SPEAKERS

    def __deepcopy__(self, memo: dict[int, Any]) -> HostAccess:
        return self  # never changed once built: copies of a config share it

    def program(self, role: str) -> str:
        """The executable the service configuration names for ``role`` (e.g. ``vtysh``)."""
        return self.programs.get(role, DEFAULT_PROGRAMS.get(role, role))

    def check_path(self, value: str | os.PathLike[str], kind: str = "path") -> Path:
        """``value`` if it resolves inside an allowed directory; :class:`PathRefused` if not.

        The path returned is the resolved one (no symlink left to follow later).
        """
        text = os.fspath(value)
        if not text or "\x00" in text:
            raise PathRefused(f"{kind} must be a non-empty path")
        path = Path(text)
        if not path.is_absolute():
            raise PathRefused(f"{kind} {text} must be an absolute path")
        if ".." in path.parts:
            raise PathRefused(f"{kind} {text} must not contain '..'")
        real = _real(path)
        shown = text if real == path else f"{text} (which resolves to {real})"
        for denied in self.denied_dirs:
            if real.is_relative_to(_real(denied)):
                raise PathRefused(f"{kind} {shown} is inside the service's own directory {denied}")
        if any(real.is_relative_to(_real(d)) for d in self.allowed_dirs):
            return real
        dirs = ", ".join(str(d) for d in self.allowed_dirs) or "none"
        raise PathRefused(
            f"{kind} {shown} is outside the directories the service allows for adapter "
            f"files and sockets ({dirs}; set SLUICE_ADAPTER_DIRS to change them)"
        )


DEFAULT_ACCESS = HostAccess()


def access_of(info: ValidationInfo | None) -> HostAccess:
    """The :class:`HostAccess` a settings model is being validated under (default: strict)."""
    context: Any = info.context if info is not None else None
    if isinstance(context, Mapping):
        found = context.get("access")
        if isinstance(found, HostAccess):
            return found
    return DEFAULT_ACCESS


def _checker(kind: str) -> Any:
    def check(value: Path, info: ValidationInfo) -> Path:
        return access_of(info).check_path(value, kind)

    return check


# Settings fields that name something on the host: checked against the allowed directories.
LocalFile = Annotated[Path, AfterValidator(_checker("file"))]
LocalDir = Annotated[Path, AfterValidator(_checker("directory"))]
LocalSocket = Annotated[Path, AfterValidator(_checker("socket"))]
