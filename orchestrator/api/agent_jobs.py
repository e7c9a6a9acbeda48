"""Attack profiles, agent jobs and the agent's side of the job channel.

Operators (API tokens): ``GET /attack-profiles``, ``POST /attack-profiles/apply`` and
``/remove`` (one job per node), ``GET /jobs``, ``GET /jobs/{id}``.
Agents (node key + ``X-Node-UUID``): ``GET /agent/jobs?wait=`` (long poll),
``POST /agent/jobs/{id}/result``, ``POST /agent/incidents/{id}/resolve``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from orchestrator.agent.profiles import PROFILES, SUITES
from orchestrator.api.deps import require
from orchestrator.api.envelope import ok
from orchestrator.api.signals import Agent, Runtime
from orchestrator.jobs import JobStore
from orchestrator.tokens import TokenInfo
from policies.errors import NotFound

router = APIRouter(tags=["attack profiles and agent jobs"])
Reader = Annotated[TokenInfo, Depends(require("read"))]
Writer = Annotated[TokenInfo, Depends(require("write"))]


async def jobs_of(request: Request) -> JobStore:
    store: JobStore = request.app.state.jobs
    return store


Jobs = Annotated[JobStore, Depends(jobs_of)]


class CustomRuleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cmd: Annotated[str, Field(min_length=1, max_length=500)]
    title: Annotated[str, Field(max_length=200)] = ""


class ApplyProfile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    profile_id: str
    suite: str
    node_ids: Annotated[list[str], Field(max_length=1000)]
    rules: Annotated[list[CustomRuleIn], Field(max_length=50)] = []


class RemoveProfile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    suite: str
    node_ids: Annotated[list[str], Field(max_length=1000)]


class JobResult(BaseModel):
    model_config = ConfigDict(extra="forbid")
    status: Literal["succeeded", "failed"]
    detail: Annotated[str, Field(max_length=2000)] = ""
    output: Annotated[str, Field(max_length=8000)] | None = None


@router.get("/attack-profiles")
async def list_profiles(_: Reader) -> dict[str, Any]:
    return ok(profiles=[p.to_dict() for p in PROFILES.values()], suites=list(SUITES))


@router.post("/attack-profiles/apply", status_code=201)
async def apply_profile(body: ApplyProfile, jobs: Jobs, who: Writer) -> dict[str, Any]:
    """Queue the profile for each node; the agents pull, apply and report."""
    created = jobs.apply_profile(
        profile_id=body.profile_id,
        suite=body.suite,
        node_ids=body.node_ids,
        rules=[r.model_dump() for r in body.rules],
        actor=who.name,
    )
    return ok(jobs=created, job_ids=[j["job_id"] for j in created])


@router.post("/attack-profiles/remove", status_code=201)
async def remove_profile(body: RemoveProfile, jobs: Jobs, who: Writer) -> dict[str, Any]:
    created = jobs.remove_profile(suite=body.suite, node_ids=body.node_ids, actor=who.name)
    return ok(jobs=created, job_ids=[j["job_id"] for j in created])


@router.get("/jobs")
async def list_jobs(
    jobs: Jobs,
    _: Reader,
    node_id: str | None = None,
    status: Literal["queued", "delivered", "succeeded", "failed"] | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> dict[str, Any]:
    items, total = jobs.list(node_id=node_id, status=status, limit=limit, offset=offset)
    return ok(jobs=items, total=total)


@router.get("/jobs/{job_id}")
async def get_job(job_id: str, jobs: Jobs, _: Reader) -> dict[str, Any]:
    return ok(job=jobs.get(job_id))


# ---------------------------------------------------------------- the agent's side


@router.get("/agent/jobs")
async def poll_jobs(
    request: Request,
    node: Agent,
    jobs: Jobs,
    wait: Annotated[float, Query(ge=0, le=30)] = 25.0,
) -> dict[str, Any]:
    """Long poll: answers as soon as the node has jobs, or with none after ``wait`` s."""
    return ok(jobs=await jobs.wait_for_jobs(node["id"], wait, request.is_disconnected))


@router.post("/agent/jobs/{job_id}/result")
async def job_result(job_id: str, body: JobResult, node: Agent, jobs: Jobs) -> dict[str, Any]:
    job, recorded = jobs.report(
        node["id"], job_id, status=body.status, detail=body.detail, output=body.output
    )
    return ok(job=job, recorded=recorded)


@router.post("/agent/incidents/{incident_id}/resolve")
async def agent_resolve(incident_id: str, node: Agent, rt: Runtime) -> dict[str, Any]:
    """The agent saw the attack end: resolve the incident it opened (its own only)."""
    inc = rt.get_incident(incident_id, with_decisions=False)
    if inc.get("node") != node["id"]:
        raise NotFound(f"incident {incident_id} does not exist", code="incident_not_found")
    if inc.get("status") != "open":
        return ok(incident=inc)
    return ok(incident=rt.resolve(incident_id, actor=f"node:{node['name']}"))
