"""The agent's durable state: its node identity and the jobs it has run (one JSON file).

Written atomically (temporary file, fsync, rename) with mode 0600 because it holds the
node key. Jobs are recorded *before* they are applied (``started``) and again with their
result (``done``), so after a crash or restart a job delivered again is never applied a
second time: a done job is answered with its recorded result, and a job that was started
but never finished is reported failed as interrupted rather than run again. The record
keeps the newest ``MAX_JOBS`` jobs.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_JOBS = 1000


@dataclass
class AgentState:
    path: Path
    node_id: str | None = None
    node_key: str | None = None
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> record

    @classmethod
    def load(cls, state_dir: Path) -> AgentState:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = state_dir / "agent.json"
        if not path.exists():
            return cls(path)
        doc = json.loads(path.read_text())
        return cls(path, doc.get("node_id"), doc.get("node_key"), dict(doc.get("jobs", {})))

    def save(self) -> None:
        if len(self.jobs) > MAX_JOBS:
            keep = sorted(self.jobs.items(), key=lambda kv: kv[1].get("seq", 0))[-MAX_JOBS:]
            self.jobs = dict(keep)
        doc = {"node_id": self.node_id, "node_key": self.node_key, "jobs": self.jobs}
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(doc, fh)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(self.path)

    def _seq(self) -> int:
        return 1 + max((j.get("seq", 0) for j in self.jobs.values()), default=0)

    def start(self, job_id: str) -> None:
        self.jobs[job_id] = {"phase": "started", "seq": self._seq()}
        self.save()

    def finish(self, job_id: str, status: str, detail: str) -> None:
        rec = self.jobs.setdefault(job_id, {"seq": self._seq()})
        rec.update(phase="done", status=status, detail=detail, reported=False)
        self.save()

    def reported(self, job_id: str) -> None:
        if job_id in self.jobs:
            self.jobs[job_id]["reported"] = True
            self.save()

    def unreported(self) -> list[str]:
        return [
            j for j, r in self.jobs.items() if r.get("phase") == "done" and not r.get("reported")
        ]
