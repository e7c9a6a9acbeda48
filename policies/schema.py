"""The policy model and its loader: a directory of YAML files becomes one :class:`Policy`.

Each file holds one or more top-level sections (``settings``, ``guardrails``,
``adapters``, ...); a section may appear in only one file. Errors name the file, the line
and the field. Secrets are never written in a policy file: ``auth_token`` and any config
value may reference an environment variable as ``${NAME}``, resolved at load time.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from policies.errors import PolicyInvalid
from policies.guardrails import Guardrails

MAX_TTL = 30 * 24 * 3600  # a month; longer is a mistake, use ttl 0 for "until withdrawn"
ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class GlobalSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    dry_run: bool = False
    default_ttl: Annotated[int, Field(ge=0, le=MAX_TTL)] = 300
    cooldown_seconds: Annotated[int, Field(ge=0, le=86_400)] = 60
    cooldown_applies_to_manual: bool = False


class AdapterDecl(BaseModel):
    """An adapter declared in the policy (the same fields as the API's create/update)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: Annotated[str, Field(min_length=1, max_length=100)]
    adapter_type: str
    endpoint: str = ""
    auth_token: str | None = None
    config: dict[str, Any] = {}
    capabilities: list[str] | None = None

    @field_validator("auth_token")
    @classmethod
    def _token_is_reference(cls, v: str | None) -> str | None:
        if v is not None and not ENV_REF.fullmatch(v.strip()):
            raise ValueError(
                "write the secret in an environment variable and reference it as ${NAME}; "
                "policy files are kept in git"
            )
        return v


class Policy(BaseModel):
    """The whole policy in force."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    settings: GlobalSettings = GlobalSettings()
    guardrails: Guardrails = Guardrails()
    adapters: list[AdapterDecl] = []

    @field_validator("adapters")
    @classmethod
    def _unique_names(cls, v: list[AdapterDecl]) -> list[AdapterDecl]:
        seen: set[str] = set()
        for decl in v:
            if decl.name in seen:
                raise ValueError(f"adapter name {decl.name!r} is declared twice")
            seen.add(decl.name)
        return v


# ---------------------------------------------------------------- loading


def resolve_env(value: str, env: Mapping[str, str] | None = None) -> str:
    """Replace ``${NAME}`` references; a missing variable is an error."""
    env = os.environ if env is None else env

    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in env:
            raise ValueError(f"environment variable {name} is not set")
        return env[name]

    return ENV_REF.sub(sub, value)


def _line_of(node: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """The 1-based line of the YAML node at ``loc`` (or of its deepest existing parent)."""
    line = None if node is None else node.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == str(part):
                    node, line = v, k.start_mark.line + 1
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(node.value):
                return line
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def _read_file(path: Path) -> tuple[dict[str, Any], yaml.Node | None]:
    text = path.read_text()
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise PolicyInvalid(f"invalid YAML: {problem}", location=where) from None
    if data is None:
        return {}, node
    if not isinstance(data, dict):
        raise PolicyInvalid("a policy file must be a mapping of sections", location=f"{path}:1")
    return data, node


def policy_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())


def load_policy(directory: str | Path, model: type[Policy] = Policy) -> Policy:
    """Load and validate every ``*.yaml`` file in ``directory`` into one policy."""
    directory = Path(directory)
    if not directory.is_dir():
        raise PolicyInvalid(f"policy directory {directory} does not exist")
    merged: dict[str, Any] = {}
    origin: dict[str, tuple[Path, yaml.Node | None]] = {}
    for path in policy_files(directory):
        data, node = _read_file(path)
        for section, value in data.items():
            if section in merged:
                first = origin[section][0]
                raise PolicyInvalid(
                    f"section {section!r} is already defined in {first.name}",
                    location=f"{path}:{_line_of(node, (section,))}",
                    field=str(section),
                )
            merged[section] = value
            origin[section] = (path, node)
    try:
        return model.model_validate(merged)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(err["loc"])
        section = str(loc[0]) if loc else ""
        path, node = origin.get(section, (directory, None))
        line = _line_of(node, loc) if node is not None else None
        where = f"{path}:{line}" if line else str(path)
        field = ".".join(str(p) for p in loc)
        msg = str(err["msg"]).removeprefix("Value error, ")
        raise PolicyInvalid(f"{field}: {msg}", location=where, field=field) from None
