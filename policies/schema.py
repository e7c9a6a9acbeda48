"""The policy model and its loader: a directory of YAML files becomes one :class:`Policy`.

Each file holds one or more top-level sections (``settings``, ``guardrails``,
``adapters``, ...). The lists (``adapters``, ``thresholds``, ``allowlist``) and the mappings
(``settings``, ``guardrails``, ``baseline``, ``escalation``) may be split over several files,
each key in one file only (so an exported file of API-made objects can be added as is);
any other section lives in one file. Errors name the file, the line
and the field. Secrets are never written in a policy file: ``auth_token`` and any config
value may reference an environment variable as ``${NAME}``, resolved at load time.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any

import yaml
import yaml_rs
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from policies.aggregation import CarpetBombing
from policies.errors import PolicyInvalid
from policies.guardrails import Guardrails
from policies.tables import Allowlist, EntryInvalid, HostThresholds
from policies.tiers import Baseline, Escalation, GeoLockdown

MAX_TTL = 30 * 24 * 3600  # a month; longer is a mistake, use ttl 0 for "until withdrawn"
ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
SECRET_KEY = re.compile(r"token|secret|passw|api[_-]?key|private[_-]?key", re.IGNORECASE)


def _leaves(value: object, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], object]]:
    """(path, value) for every scalar under a config mapping."""
    if isinstance(value, dict):
        return [leaf for k, v in value.items() for leaf in _leaves(v, (*path, str(k)))]
    if isinstance(value, list):
        return [leaf for i, v in enumerate(value) for leaf in _leaves(v, (*path, str(i)))]
    return [(path, value)] if path else []


class GlobalSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    dry_run: bool = False
    default_ttl: Annotated[int, Field(ge=0, le=MAX_TTL)] = 300
    cooldown_seconds: Annotated[int, Field(ge=0, le=86_400)] = 60
    cooldown_applies_to_manual: bool = False
    # Resolving an incident (API, a detector's unban, the episode timeout) withdraws its
    # live rules; off: they stay until their TTL runs out.
    withdraw_on_resolve: bool = True


class AdapterDecl(BaseModel):
    """An adapter declared in the policy (the same fields as the API's create/update)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: Annotated[str, Field(min_length=1, max_length=100)]
    adapter_type: str
    endpoint: str = ""
    auth_token: str | None = None
    config: dict[str, Any] = {}
    capabilities: list[str] | None = None

    @field_validator("config")
    @classmethod
    def _config_secrets_are_references(cls, v: dict[str, Any]) -> dict[str, Any]:
        for path, value in _leaves(v):
            name = path[-1]
            if (
                SECRET_KEY.search(name)
                and isinstance(value, str)
                and not ENV_REF.fullmatch(value.strip())
            ):
                raise ValueError(
                    f"config.{'.'.join(path)} looks like a secret: put it in an environment "
                    "variable and write ${NAME}; policy files are kept in git"
                )
        return v

    @field_validator("auth_token")
    @classmethod
    def _token_is_reference(cls, v: str | None) -> str | None:
        if v is not None and not ENV_REF.fullmatch(v.strip()):
            raise ValueError(
                "write the secret in an environment variable and reference it as ${NAME}; "
                "policy files are kept in git"
            )
        return v


def _dump_table(v: HostThresholds | Allowlist) -> list[dict[str, Any]]:
    return v.to_list()


def _build_thresholds(raw: object, info: ValidationInfo) -> HostThresholds:
    escalation = info.data.get("escalation")
    if not isinstance(escalation, Escalation):
        raise ValueError("fix the escalation section first: thresholds refer to its tiers")
    return HostThresholds.build(raw, escalation)


_THRESHOLDS_SCHEMA = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {
            "target_ip": {"type": "string"},
            "label": {"type": "string"},
            "thresholds": {"type": "object", "additionalProperties": {"type": "integer"}},
        },
        "required": ["target_ip", "thresholds"],
    },
}
_ALLOWLIST_SCHEMA = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {
            "ip_address": {"type": "string"},
            "label": {"type": "string"},
            "scope": {"enum": ["workspace", "node"]},
            "node": {"type": "string"},
        },
        "required": ["ip_address"],
    },
}
ThresholdTable = Annotated[
    HostThresholds,
    BeforeValidator(_build_thresholds),
    PlainSerializer(_dump_table),
    WithJsonSchema(_THRESHOLDS_SCHEMA),
]
AllowTable = Annotated[
    Allowlist,
    BeforeValidator(Allowlist.build),
    PlainSerializer(_dump_table),
    WithJsonSchema(_ALLOWLIST_SCHEMA),
]


class Policy(BaseModel):
    """The whole policy in force."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)
    settings: GlobalSettings = GlobalSettings()
    guardrails: Guardrails = Guardrails()
    adapters: list[AdapterDecl] = []
    escalation: Escalation = Escalation()
    baseline: Baseline = Baseline()
    geo_lockdown: GeoLockdown | None = None
    carpet_bombing: CarpetBombing | None = None
    thresholds: ThresholdTable = Field(default_factory=HostThresholds)
    allowlist: AllowTable = Field(default_factory=Allowlist)

    @field_validator("adapters")
    @classmethod
    def _unique_names(cls, v: list[AdapterDecl]) -> list[AdapterDecl]:
        seen: set[str] = set()
        for decl in v:
            if decl.name in seen:
                raise ValueError(f"adapter name {decl.name!r} is declared twice")
            seen.add(decl.name)
        return v

    @model_validator(mode="after")
    def _cross_references(self) -> Policy:
        declared = {a.name for a in self.adapters}
        known = ", ".join(sorted(declared)) or "none are declared"
        for i, tier in enumerate(self.escalation.tiers):
            for j, name in enumerate(tier.adapters):
                if name not in declared:
                    raise EntryInvalid(
                        ("escalation", "tiers", i, "adapters", j),
                        f"tier {tier.name!r} names adapter {name!r}, which is not declared "
                        f"in adapters ({known})",
                    )
        geo = self.geo_lockdown
        if geo is not None:
            names = [t.name for t in self.escalation.tiers]
            if geo.from_tier not in names:
                raise EntryInvalid(
                    ("geo_lockdown", "from_tier"),
                    f"unknown tier {geo.from_tier!r} (tiers: {', '.join(names) or 'none'})",
                )
            for j, name in enumerate(geo.adapters or ()):
                if name not in declared:
                    raise EntryInvalid(
                        ("geo_lockdown", "adapters", j),
                        f"adapter {name!r} is not declared in adapters ({known})",
                    )
        if self.carpet_bombing is not None:
            self._check_carpet(self.carpet_bombing, declared, known)
        return self

    def _check_carpet(self, cb: CarpetBombing, declared: set[str], known: str) -> None:
        names = [t.name for t in self.escalation.tiers]
        if cb.tier is not None and cb.tier not in names:
            raise EntryInvalid(
                ("carpet_bombing", "tier"),
                f"unknown tier {cb.tier!r} (tiers: {', '.join(names) or 'none'})",
            )
        for j, name in enumerate(cb.adapters or ()):
            if name not in declared:
                raise EntryInvalid(
                    ("carpet_bombing", "adapters", j),
                    f"adapter {name!r} is not declared in adapters ({known})",
                )
        specs, _adapters, _ttl = cb.covering_tier(self.escalation.tiers)
        for spec in specs:
            kind = spec.type if spec.type in ("blackhole", "scrubbing") else "flowspec"
            floor = self.guardrails.min_prefix(kind)
            for family in ("ipv4", "ipv6"):
                mine: int = getattr(cb.min_prefix_length, family)
                theirs: int = getattr(floor, family)
                if mine < theirs:
                    raise EntryInvalid(
                        ("carpet_bombing", "min_prefix_length", family),
                        f"/{mine} is wider than guardrails.min_prefix_{kind}.{family} "
                        f"/{theirs}: the covering {kind} rule would always be refused",
                    )


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


_PARSE_LINE = re.compile(r"line (\d+)")


def _skip(events: Iterator[yaml.Event], first: yaml.Event) -> None:
    """Consume the rest of the node that starts with ``first``."""
    if not isinstance(first, yaml.MappingStartEvent | yaml.SequenceStartEvent):
        return
    depth = 1
    for event in events:
        if isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
            depth += 1
        elif isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
            depth -= 1
            if depth == 0:
                return


def _ev_line(event: yaml.Event) -> int:
    mark = event.start_mark
    return int(mark.line) + 1 if mark is not None else 0


def _line_of_path(text: str, loc: tuple[int | str, ...]) -> int | None:
    """The 1-based line of the node at ``loc``, reading events only as far as it.

    An error in entry 50,000 of a large file is found without building the whole tree.
    """
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    events = iter(yaml.parse(text, Loader=loader))
    try:
        current = next(events)
        while isinstance(current, yaml.StreamStartEvent | yaml.DocumentStartEvent):
            current = next(events)
        line = _ev_line(current)
        for part in loc:
            if isinstance(current, yaml.MappingStartEvent):
                while True:
                    key = next(events)
                    if isinstance(key, yaml.MappingEndEvent):
                        return line
                    value = next(events) if isinstance(key, yaml.ScalarEvent) else None
                    if value is None:
                        _skip(events, key)
                        _skip(events, next(events))
                        continue
                    if isinstance(key, yaml.ScalarEvent) and key.value == str(part):
                        line = _ev_line(key)
                        current = value
                        break
                    _skip(events, value)
            elif isinstance(current, yaml.SequenceStartEvent) and isinstance(part, int):
                index = 0
                while True:
                    item = next(events)
                    if isinstance(item, yaml.SequenceEndEvent):
                        return line
                    if index == part:
                        line = _ev_line(item)
                        current = item
                        break
                    _skip(events, item)
                    index += 1
            else:
                return line
    except (StopIteration, yaml.YAMLError):
        return None
    return line


def _compose(text: str) -> yaml.Node | None:
    """The YAML node tree, for line numbers: only built when an error needs one."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        return yaml.compose(text, Loader=loader)
    except yaml.YAMLError:
        return None


def _duplicate_key_line(node: yaml.Node | None) -> int | None:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for k, v in node.value:
            if k.value in seen:
                return int(k.start_mark.line) + 1
            seen.add(k.value)
            line = _duplicate_key_line(v)
            if line is not None:
                return line
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            line = _duplicate_key_line(item)
            if line is not None:
                return line
    return None


_BOMS = (
    (b"\xef\xbb\xbf", "UTF-8"),
    (b"\xff\xfe\x00\x00", "UTF-32"),
    (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe", "UTF-16"),
    (b"\xfe\xff", "UTF-16"),
)


def read_text(path: Path, directory: Path | None = None) -> str:
    """The text of one policy file: UTF-8 without a byte-order mark, inside ``directory``.

    Refused with the file and the reason (never its content): a symbolic link that leads
    out of the policy directory, a file that cannot be read, a byte-order mark, bytes that
    are not UTF-8, and NUL bytes (a binary file).
    """
    if directory is not None:
        root = directory.resolve()
        try:
            target = path.resolve(strict=True)
        except (OSError, RuntimeError):
            raise PolicyInvalid(
                "a symbolic link to a file that does not exist", location=str(path)
            ) from None
        if not target.is_relative_to(root):
            raise PolicyInvalid(
                "a symbolic link that leads outside the policy directory; "
                "policy files must live in the directory itself",
                location=str(path),
            )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PolicyInvalid(
            f"cannot read the file: {exc.strerror or exc}", location=str(path)
        ) from None
    for bom, name in _BOMS:
        if data.startswith(bom):
            raise PolicyInvalid(
                f"the file starts with a {name} byte-order mark; save it as UTF-8 without one",
                location=f"{path}:1",
            )
    if b"\0" in data:
        line = data.count(b"\n", 0, data.index(b"\0")) + 1
        raise PolicyInvalid("a NUL byte: this is not a text file", location=f"{path}:{line}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise PolicyInvalid(
            f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})",
            location=f"{path}:{line}",
        ) from None


def _read_file(path: Path, text: str) -> dict[str, Any]:
    """Parse one policy file (YAML 1.2, so a bare NO stays the string "NO")."""
    try:
        data = yaml_rs.loads(text)
    except yaml_rs.YAMLDecodeError as exc:
        message = str(exc)
        m = _PARSE_LINE.search(message)
        line = int(m.group(1)) if m else None
        if line is None and message.startswith("duplicate mapping key"):
            line = _duplicate_key_line(_compose(text))
        problem = message.splitlines()[-1] if m else message
        where = f"{path}:{line}" if line else str(path)
        raise PolicyInvalid(f"invalid YAML: {problem}", location=where) from None
    if data is None:
        return {}
    if isinstance(data, list) and text.lstrip().startswith("---") and len(data) > 1:
        raise PolicyInvalid("one YAML document per policy file", location=f"{path}:1")
    if not isinstance(data, dict):
        raise PolicyInvalid("a policy file must be a mapping of sections", location=f"{path}:1")
    return data


def policy_files(directory: Path) -> list[Path]:
    """The ``*.yaml``/``*.yml`` entries of ``directory`` (files and symbolic links)."""
    return sorted(
        p
        for p in directory.iterdir()
        if p.suffix in (".yaml", ".yml") and (p.is_symlink() or p.is_file())
    )


LIST_SECTIONS = frozenset({"adapters", "thresholds", "allowlist"})
KEYED_SECTIONS = frozenset({"settings", "guardrails", "baseline", "escalation"})


class _Origins:
    """Which file each part of the merged policy came from (for ``file:line`` errors).

    A list section (adapters, thresholds, allowlist) may be split over several files, its
    entries in file-name order; a mapping section (settings, guardrails, baseline,
    escalation) too, each key in one file only; any other section lives in one file.
    """

    def __init__(self) -> None:
        self.section: dict[str, Path] = {}
        self.entries: dict[str, list[tuple[Path, int]]] = {}
        self.keys: dict[tuple[str, str], Path] = {}

    def add(self, merged: dict[str, Any], path: Path, text: str, data: dict[str, Any]) -> None:
        for section, value in data.items():
            have = merged.get(section)
            if (
                section in LIST_SECTIONS
                and isinstance(value, list)
                and (section not in merged or isinstance(have, list))
            ):
                spots = self.entries.setdefault(section, [])
                spots += [(path, i) for i in range(len(value))]
                merged[section] = [*(have or []), *value]
            elif (
                section in KEYED_SECTIONS
                and isinstance(value, dict)
                and (section not in merged or isinstance(have, dict))
            ):
                for key in value:
                    first = self.keys.get((section, str(key)))
                    if first is not None:
                        line = _line_of_path(text, (section, str(key)))
                        raise PolicyInvalid(
                            f"{section}.{key} is already defined in {first.name}",
                            location=f"{path}:{line}",
                            field=f"{section}.{key}",
                        )
                    self.keys[(section, str(key))] = path
                merged[section] = {**(have or {}), **value}
            elif section in merged:
                first = self.section[section]
                line = _line_of_path(text, (section,))
                raise PolicyInvalid(
                    f"section {section!r} is already defined in {first.name}",
                    location=f"{path}:{line}",
                    field=str(section),
                )
            else:
                merged[section] = value
            self.section.setdefault(section, path)

    def locate(
        self, loc: tuple[int | str, ...], directory: Path, texts: dict[Path, str]
    ) -> tuple[str, str]:
        """``(file:line, dotted field)`` for an error at ``loc`` of the merged policy."""
        field = ".".join(str(p) for p in loc)
        section = str(loc[0]) if loc else ""
        path = self.section.get(section)
        local = loc
        if len(loc) > 1:
            spots = self.entries.get(section, [])
            if isinstance(loc[1], int) and 0 <= loc[1] < len(spots):
                path, index = spots[loc[1]]
                local = (loc[0], index, *loc[2:])
            elif (section, str(loc[1])) in self.keys:
                path = self.keys[(section, str(loc[1]))]
        if path is None:
            return str(directory), field
        line = _line_of_path(texts[path], local)
        return (f"{path}:{line}" if line else str(path)), field


Check = Callable[[Policy], None]


def load_policy(
    directory: str | Path, model: type[Policy] = Policy, *, check: Check | None = None
) -> Policy:
    """Load and validate every ``*.yaml`` file in ``directory`` into one policy.

    Relative paths in the policy (``geo_lockdown.database``) are relative to the file
    that names them. ``check`` runs what only the service knows (adapter settings, the
    environment) on the validated policy; an :class:`EntryInvalid` it raises is reported
    with file and line like any other error.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise PolicyInvalid(f"policy directory {directory} does not exist")
    merged: dict[str, Any] = {}
    origins = _Origins()
    texts: dict[Path, str] = {}
    try:
        paths = policy_files(directory)
    except OSError as exc:
        raise PolicyInvalid(
            f"cannot read the directory: {exc.strerror or exc}", location=str(directory)
        ) from None
    for path in paths:
        texts[path] = read_text(path, directory)
        origins.add(merged, path, texts[path], _read_file(path, texts[path]))
    geo = merged.get("geo_lockdown")
    if isinstance(geo, dict) and isinstance(geo.get("database"), str):
        database = Path(geo["database"])
        if not database.is_absolute():
            merged["geo_lockdown"] = {
                **geo,
                "database": origins.section["geo_lockdown"].parent / database,
            }
    try:
        policy = model.model_validate(merged)
        if check is not None:
            check(policy)
    except EntryInvalid as exc:
        where, field = origins.locate(exc.loc, directory, texts)
        message = exc.message.removeprefix(f"{field}: ")
        raise PolicyInvalid(f"{field}: {message}", location=where, field=field) from None
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(err["loc"])
        where, field = origins.locate(loc, directory, texts)
        msg = str(err["msg"]).removeprefix("Value error, ")
        raise PolicyInvalid(f"{field}: {msg}", location=where, field=field) from None
    return policy
