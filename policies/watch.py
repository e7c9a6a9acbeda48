"""Hot reload: notice that a policy directory changed, validate it, hand it over.

The orchestrator calls :meth:`PolicyWatcher.poll` periodically. A change is a change of
content (SHA-256 over the names and bytes of the policy files and of the MMDB file the
policy names), not of timestamps, so touching a file or rewriting it unchanged does
nothing; file sizes and modification times only decide whether the files are read and
hashed at all. A new policy that does not validate is reported and the old one stays in force;
the same broken content is reported once, not on every poll. When the files on disk come
back to the policy in force (the bad file was removed or reverted), that is reported too,
so a reload status always describes the files as they are now.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

from policies.errors import PolicyInvalid
from policies.schema import Check, Policy, load_policy, policy_files


def _stats(directory: Path, extra: tuple[Path, ...]) -> tuple[tuple[str, int, int], ...]:
    out = []
    for path in [*policy_files(directory), *extra]:
        try:
            st = path.stat()
        except OSError:
            out.append((str(path), -1, -1))
        else:
            out.append((str(path), st.st_size, st.st_mtime_ns))
    return tuple(out)


def content_hash(directory: Path, extra: tuple[Path, ...] = ()) -> str:
    """A hash of every policy file (name and bytes) plus ``extra`` files."""
    digest = hashlib.sha256()
    root = directory.resolve()
    files = policy_files(directory)
    for path in [*files, *extra]:
        digest.update(path.name.encode() + b"\0")
        try:
            if path in files and path.is_symlink() and not path.resolve().is_relative_to(root):
                # refused by the loader; never read a file outside the directory
                digest.update(b"<outside>" + str(path.readlink()).encode())
            else:
                digest.update(path.read_bytes())
        except (OSError, RuntimeError):
            digest.update(b"<missing>")
        digest.update(b"\0")
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class Reload:
    """The outcome of a poll that saw a change."""

    policy: Policy | None  # the new policy, or None when it was refused
    error: PolicyInvalid | None
    digest: str
    # True when the files are back to the policy in force after a refused change: the
    # refusal no longer applies and nothing needs to be put in force
    restored: bool = False


class PolicyWatcher:
    """Watches one directory; ``current`` is the policy in force."""

    def __init__(
        self, directory: str | Path, current: Policy | None = None, *, check: Check | None = None
    ) -> None:
        self.directory = Path(directory)
        self.check = check
        self.current = current if current is not None else load_policy(self.directory, check=check)
        self.digest = content_hash(self.directory, self._extra(self.current))
        self._stats = _stats(self.directory, self._extra(self.current))
        self._refused: str | None = None
        self._before: tuple[Policy, str] | None = None

    @staticmethod
    def _extra(policy: Policy) -> tuple[Path, ...]:
        geo = policy.geo_lockdown
        return (geo.database,) if geo is not None else ()

    def poll(self) -> Reload | None:
        """None when nothing changed (or the same refused content is still there)."""
        try:
            return self._poll()
        except OSError as exc:  # e.g. the directory became unreadable
            error = PolicyInvalid(f"cannot read the policy directory: {exc}")
            self._refused = "<unreadable>"
            return Reload(None, error, "<unreadable>")

    def _poll(self) -> Reload | None:
        if not self.directory.is_dir():
            error = PolicyInvalid(f"policy directory {self.directory} disappeared")
            if self._refused == "<gone>":
                return None
            self._refused = "<gone>"
            return Reload(None, error, "<gone>")
        stats = _stats(self.directory, self._extra(self.current))
        newest = max((mtime for _, _, mtime in stats), default=0)
        if stats == self._stats and newest < time.time_ns() - 2_000_000_000:
            # Same names, sizes and times, none of them recent (a coarse file-system
            # clock could hide a same-size edit made within its tick): skip reading.
            return None
        self._stats = stats
        digest = content_hash(self.directory, self._extra(self.current))
        if digest == self.digest and self._refused is not None:
            self._refused = None
            return Reload(self.current, None, digest, restored=True)
        if digest in (self.digest, self._refused):
            return None
        try:
            policy = load_policy(self.directory, check=self.check)
        except PolicyInvalid as exc:
            self._refused = digest
            return Reload(None, exc, digest)
        self._before = (self.current, self.digest)
        self.current = policy
        self.digest = content_hash(self.directory, self._extra(policy))
        self._stats = _stats(self.directory, self._extra(policy))
        self._refused = None
        return Reload(policy, None, self.digest)

    def reject(self) -> None:
        """The policy the last poll returned could not be put in force: it is refused.

        The previous policy stays current; the files on disk are remembered as refused, so
        they are not reported again and going back to the previous files is a restore.
        """
        if self._before is None:
            return
        self._refused = self.digest
        self.current, self.digest = self._before
        self._before = None
