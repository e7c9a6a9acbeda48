"""The audit anchor file is written durably: a temporary file in the same directory,
fsync'd, renamed over the anchor, then the directory fsync'd; a crash before the rename
leaves the previous anchor whole."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path
from typing import Any

import pytest

from orchestrator.store.audit import ANCHOR_FILE, Anchor, AnchorState


def test_the_anchor_holds_the_record_it_was_advanced_to(tmp_path: Path) -> None:
    anchor = Anchor(tmp_path / ANCHOR_FILE)
    try:
        anchor.advance(3, "m3", "kid")
        assert anchor.read() == AnchorState(3, "m3", "kid")
        assert json.loads(anchor.path.read_text()) == {"id": 3, "mac": "m3", "key_id": "kid"}
        assert stat.S_IMODE(anchor.path.stat().st_mode) == 0o600
        assert sorted(p.name for p in tmp_path.iterdir()) == [ANCHOR_FILE]  # no temp file
        anchor.advance(2, "m2", "kid")  # only forward
        assert anchor.read() == AnchorState(3, "m3", "kid")
        anchor.advance(2, "m2", "kid", force=True)
        assert anchor.read() == AnchorState(2, "m2", "kid")
        anchor.path.write_text('{"id": 9, "ma')  # torn by something else: overwritten
        anchor.advance(4, "m4", "kid")
        assert anchor.read() == AnchorState(4, "m4", "kid")
    finally:
        anchor.close()


def test_the_record_is_synced_before_the_rename_and_the_directory_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    anchor = Anchor(tmp_path / ANCHOR_FILE)
    steps: list[tuple[str, str]] = []
    fsync, replace = os.fsync, os.replace

    def synced(fd: int) -> None:
        steps.append(("fsync", str(Path(f"/proc/self/fd/{fd}").readlink())))
        fsync(fd)

    def renamed(src: Any, dst: Any) -> None:
        steps.append(("rename", f"{src} -> {dst}"))
        replace(src, dst)

    monkeypatch.setattr(os, "fsync", synced)
    monkeypatch.setattr(os, "replace", renamed)
    try:
        anchor.advance(1, "m1", "kid")
    finally:
        anchor.close()
    assert steps == [
        ("fsync", str(anchor.tmp)),
        ("rename", f"{anchor.tmp} -> {anchor.path}"),
        ("fsync", str(tmp_path)),
    ]
    assert anchor.tmp.parent == anchor.path.parent  # one file system: an atomic rename


def test_a_crash_between_the_temporary_write_and_the_rename_leaves_the_old_anchor(
    tmp_path: Path,
) -> None:
    anchor = Anchor(tmp_path / ANCHOR_FILE)
    anchor.advance(5, "m5", "kid")
    anchor.close()
    pid = os.fork()
    if pid == 0:  # the child dies where a crash would stop it: record synced, no rename
        try:
            os.replace = lambda *_a, **_kw: os._exit(0)
            Anchor(tmp_path / ANCHOR_FILE).advance(6, "m6", "kid")
        finally:
            os._exit(1)  # the rename was reached and skipped: exit 0 above
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert json.loads(anchor.tmp.read_text())["id"] == 6  # the write got that far
    assert Anchor(tmp_path / ANCHOR_FILE).read() == AnchorState(5, "m5", "kid")
    # the next start writes over the leftover and moves on
    again = Anchor(tmp_path / ANCHOR_FILE)
    try:
        again.advance(6, "m6", "kid")
        assert again.read() == AnchorState(6, "m6", "kid")
        assert sorted(p.name for p in tmp_path.iterdir()) == [ANCHOR_FILE]
    finally:
        again.close()


def test_commits_hand_their_head_to_the_anchors_own_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The syncs run on the anchor's writer thread, never on the committing thread; the
    newest head wins, flush waits for it and close writes what is left."""
    anchor = Anchor(tmp_path / ANCHOR_FILE)
    synced_on: list[str] = []
    fsync = os.fsync

    def synced(fd: int) -> None:
        synced_on.append(threading.current_thread().name)
        fsync(fd)

    monkeypatch.setattr(os, "fsync", synced)
    try:
        for i in range(1, 51):
            anchor.advance_later(i, f"m{i}", "kid")
        anchor.advance_later(7, "m7", "kid")  # an older head handed over late: ignored
        assert anchor.flush()
        assert anchor.read() == AnchorState(50, "m50", "kid")
        assert synced_on and set(synced_on) == {"audit-anchor"}
        anchor.advance_later(51, "m51", "kid")
    finally:
        anchor.close()
    assert Anchor(tmp_path / ANCHOR_FILE).read() == AnchorState(51, "m51", "kid")
    assert not any(t.name == "audit-anchor" for t in threading.enumerate())
