"""Loading policy directories: the shipped examples, and bad input named by file:line."""

from __future__ import annotations

from pathlib import Path

import pytest

from policies.errors import PolicyInvalid
from policies.schema import Policy, load_policy
from tests.unit.policies.helpers import make_policy, policy_data, write

EXAMPLES = Path(__file__).resolve().parents[3] / "policies" / "examples"


@pytest.mark.parametrize("name", ["default", "game-server"])
def test_examples_load(name: str) -> None:
    policy = load_policy(EXAMPLES / name)
    assert [t.name for t in policy.escalation.tiers]
    assert {a.name for a in policy.adapters} >= {"log"}
    for tier in policy.escalation.tiers:
        assert tier.adapters


def test_default_example_matches_documented_defaults() -> None:
    policy = load_policy(EXAMPLES / "default")
    tiers = policy.escalation.tiers
    assert [(t.bps, [i.type for i in t.intents]) for t in tiers] == [
        (100_000_000, ["flowspec_rate_limit"]),
        (500_000_000, ["flowspec_drop"]),
        (2_000_000_000, ["blackhole"]),
        (5_000_000_000, ["scrubbing"]),
    ]
    assert all(t.ttl == 300 and t.adapters == ["log"] for t in tiers)
    assert policy.settings.cooldown_seconds == 60
    assert policy.settings.default_ttl == 300


def test_empty_policy_still_works() -> None:
    policy = Policy()
    assert policy.escalation.tiers == []
    assert len(policy.thresholds) == 0
    assert len(policy.allowlist) == 0


def _error(tmp_path: Path, text: str, name: str = "policy.yaml") -> PolicyInvalid:
    write(tmp_path, {name: text})
    with pytest.raises(PolicyInvalid) as info:
        load_policy(tmp_path)
    return info.value


BASE = """\
adapters:
  - {name: log, adapter_type: log}
escalation:
  tiers:
    - name: tier1
      bps: 100M
      intents: [{type: flowspec_drop}]
      adapters: [log]
    - name: tier2
      bps: 2G
      intents: [{type: blackhole}]
      adapters: [log]
"""


def test_invalid_yaml_names_file_and_line(tmp_path: Path) -> None:
    err = _error(tmp_path, "settings:\n  dry_run: [true\n  default_ttl: 3\n")
    assert err.location is not None
    assert err.location.startswith(f"{tmp_path / 'policy.yaml'}:")
    assert "invalid YAML" in str(err)


def test_duplicate_key_names_its_line(tmp_path: Path) -> None:
    err = _error(tmp_path, "settings:\n  dry_run: true\n  dry_run: false\n")
    assert err.location == f"{tmp_path / 'policy.yaml'}:3"


def test_unknown_key_names_file_line_and_field(tmp_path: Path) -> None:
    err = _error(tmp_path, BASE.replace("      bps: 2G\n", "      bps: 2G\n      colour: red\n"))
    assert err.location == f"{tmp_path / 'policy.yaml'}:11"
    assert err.field == "escalation.tiers.1.colour"


def test_tiers_must_increase(tmp_path: Path) -> None:
    err = _error(tmp_path, BASE.replace("bps: 2G", "bps: 50M"))
    assert "must be higher than tier 'tier1'" in str(err)
    assert err.location is not None and err.location.endswith(":3")


def test_tier_naming_undeclared_adapter(tmp_path: Path) -> None:
    err = _error(
        tmp_path,
        BASE.replace("adapters: [log]\n    - name: tier2", "adapters: [gobgp]\n    - name: tier2"),
    )
    assert "adapter 'gobgp'" in str(err) and "not declared" in str(err)
    assert err.field == "escalation.tiers.0.adapters.0"
    assert err.location == f"{tmp_path / 'policy.yaml'}:8"


def test_per_host_thresholds_must_increase_with_the_tier(tmp_path: Path) -> None:
    text = BASE + (
        "thresholds:\n"
        "  - {target_ip: 198.51.100.0/24, thresholds: {tier1_bps: 10M}}\n"
        "  - {target_ip: 198.51.100.7, thresholds: {tier1_bps: 3G}}\n"
    )
    err = _error(tmp_path, text)
    assert err.field == "thresholds.1.thresholds"
    assert err.location == f"{tmp_path / 'policy.yaml'}:15"
    assert "tier2_bps 2000000000 must be higher than tier1_bps 3000000000" in str(err)


@pytest.mark.parametrize(
    ("entry", "field", "words"),
    [
        ("{target_ip: 198.51.100.1/24, thresholds: {tier1_bps: 1M}}", "target_ip", "host bits"),
        ("{target_ip: 300.1.1.1, thresholds: {tier1_bps: 1M}}", "target_ip", "not an IP"),
        (
            "{target_ip: 198.51.100.0/24, thresholds: {tier9_bps: 1M}}",
            "thresholds.tier9_bps",
            "unknown tier",
        ),
        (
            "{target_ip: 198.51.100.0/24, thresholds: {tier1_bps: fast}}",
            "thresholds.tier1_bps",
            "not a rate",
        ),
        ("{target_ip: 198.51.100.0/24, thresholds: {tier1: 1}}", "thresholds.tier1", "<tier>_bps"),
        (
            "{target_ip: 198.51.100.0/24, label: x, extra: 1, thresholds: {tier1_bps: 1M}}",
            "extra",
            "unknown field",
        ),
        ("{thresholds: {tier1_bps: 1M}}", "target_ip", "field required"),
    ],
)
def test_bad_threshold_entries(tmp_path: Path, entry: str, field: str, words: str) -> None:
    text = BASE + "thresholds:\n  - {target_ip: 203.0.113.0/24, thresholds: {tier1_bps: 1M}}\n"
    err = _error(tmp_path, text + f"  - {entry}\n")
    assert err.field == f"thresholds.1.{field}"
    assert words in str(err)
    assert err.location == f"{tmp_path / 'policy.yaml'}:15"


def test_duplicate_per_host_prefix(tmp_path: Path) -> None:
    text = BASE + (
        "thresholds:\n"
        "  - {target_ip: 2001:db8::/48, thresholds: {tier1_bps: 1M}}\n"
        "  - {target_ip: '2001:db8:0::/48', thresholds: {tier1_bps: 2M}}\n"
    )
    err = _error(tmp_path, text)
    assert "already has thresholds" in str(err)
    assert err.location == f"{tmp_path / 'policy.yaml'}:15"


def test_nested_per_host_prefixes_are_allowed(tmp_path: Path) -> None:
    policy = make_policy(
        tmp_path,
        thresholds=[
            {
                "target_ip": "198.51.100.0/24",
                "thresholds": {"tier1_bps": "1G", "tier2_bps": "1500M"},
            },
            {"target_ip": "198.51.100.7", "thresholds": {"tier1_bps": "5M"}},
        ],
    )
    hit = policy.thresholds.lookup(4, int.from_bytes(bytes([198, 51, 100, 7])))
    assert hit is not None and hit.prefix == "198.51.100.7/32"


@pytest.mark.parametrize(
    ("entries", "index", "field", "words"),
    [
        (
            ["{ip_address: 192.0.2.0/24}", "{ip_address: 192.0.2.9}"],
            1,
            "ip_address",
            "overlaps entry 0",
        ),
        (["{ip_address: 192.0.2.9}", "{ip_address: 192.0.2.9/32}"], 1, "ip_address", "duplicates"),
        (["{ip_address: 192.0.2.0/33}"], 0, "ip_address", "not an IP"),
        (["{ip_address: 192.0.2.9, scope: node}"], 0, "node", "needs node"),
        (["{ip_address: 192.0.2.9, scope: planet}"], 0, "scope", "not workspace or node"),
        (["{ip_address: 192.0.2.9, node: edge-1}"], 0, "scope", "scope: node"),
        (
            ["{ip_address: 192.0.2.0/24}", "{ip_address: 192.0.2.9, scope: node, node: e1}"],
            1,
            "ip_address",
            "overlaps workspace entry",
        ),
    ],
)
def test_bad_allowlist_entries(
    tmp_path: Path, entries: list[str], index: int, field: str, words: str
) -> None:
    text = "allowlist:\n" + "".join(f"  - {e}\n" for e in entries)
    err = _error(tmp_path, text, "allowlist.yaml")
    assert err.field == f"allowlist.{index}.{field}"
    assert words in str(err)
    assert err.location == f"{tmp_path / 'allowlist.yaml'}:{index + 2}"


def test_same_prefix_on_two_nodes_is_fine(tmp_path: Path) -> None:
    policy = make_policy(
        tmp_path,
        allowlist=[
            {"ip_address": "192.0.2.9", "scope": "node", "node": "a"},
            {"ip_address": "192.0.2.9", "scope": "node", "node": "b"},
        ],
    )
    assert len(policy.allowlist) == 2


def test_unknown_country_code(tmp_path: Path) -> None:
    mmdb = tmp_path / "geo.mmdb"
    mmdb.write_bytes(b"")
    text = BASE + (
        "geo_lockdown:\n  countries: [CN, XX]\n  database: geo.mmdb\n  from_tier: tier1\n"
    )
    err = _error(tmp_path, text)
    assert err.field == "geo_lockdown.countries.1"
    assert "ISO 3166-1 alpha-2" in str(err)
    assert err.location == f"{tmp_path / 'policy.yaml'}:14"


def test_norway_stays_a_country(tmp_path: Path) -> None:
    (tmp_path / "geo.mmdb").write_bytes(b"")
    text = BASE + "geo_lockdown:\n  countries: [NO, SE]\n  database: geo.mmdb\n  from_tier: tier2\n"
    policy = load_policy(write(tmp_path, {"policy.yaml": text}))
    assert policy.geo_lockdown is not None
    assert policy.geo_lockdown.countries == ["NO", "SE"]
    assert policy.geo_lockdown.database == tmp_path / "geo.mmdb"


def test_geo_needs_an_existing_database_and_tier(tmp_path: Path) -> None:
    err = _error(
        tmp_path,
        BASE + "geo_lockdown:\n  countries: [CN]\n  database: nope.mmdb\n  from_tier: tier1\n",
    )
    assert "does not exist" in str(err)
    (tmp_path / "nope.mmdb").write_bytes(b"")
    err = _error(
        tmp_path,
        BASE + "geo_lockdown:\n  countries: [CN]\n  database: nope.mmdb\n  from_tier: tier7\n",
    )
    assert err.field == "geo_lockdown.from_tier"


def test_secrets_must_be_env_references(tmp_path: Path) -> None:
    text = "adapters:\n  - name: cf\n    adapter_type: cloudflare\n    auth_token: hunter2\n"
    err = _error(tmp_path, text)
    assert "environment variable" in str(err)
    assert "hunter2" not in str(err)
    assert err.location == f"{tmp_path / 'policy.yaml'}:4"


def test_section_defined_twice(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "a.yaml": "settings: {dry_run: true}\ngeo_lockdown: null\n",
            "b.yaml": "\n\nsettings:\n  cooldown_seconds: 5\n  dry_run: false\n",
        },
    )
    with pytest.raises(PolicyInvalid) as info:
        load_policy(tmp_path)
    assert info.value.location == f"{tmp_path / 'b.yaml'}:5"
    assert "settings.dry_run is already defined in a.yaml" in str(info.value)
    (tmp_path / "b.yaml").write_text("geo_lockdown: null\n")
    with pytest.raises(PolicyInvalid) as info:
        load_policy(tmp_path)
    assert info.value.location == f"{tmp_path / 'b.yaml'}:1"


def test_lists_and_mappings_may_be_split_over_files(tmp_path: Path) -> None:
    data = policy_data(allowlist=[{"ip_address": "192.0.2.0/24"}])
    write(
        tmp_path,
        {
            "a.yaml": data,
            "b.yaml": "settings:\n  dry_run: true\nallowlist:\n  - ip_address: 198.51.100.1\n"
            "  - ip_address: 192.0.2.7\n",
        },
    )
    with pytest.raises(PolicyInvalid) as info:  # the error points into the right file
        load_policy(tmp_path)
    assert info.value.location == f"{tmp_path / 'b.yaml'}:5"
    assert info.value.field == "allowlist.2.ip_address"
    (tmp_path / "b.yaml").write_text(
        "settings:\n  dry_run: true\nallowlist:\n  - ip_address: 198.51.100.1\n"
    )
    policy = load_policy(tmp_path)
    assert policy.settings.dry_run is True and policy.settings.cooldown_seconds == 0
    assert [e.prefix for e in policy.allowlist.entries] == ["192.0.2.0/24", "198.51.100.1/32"]


def test_rate_suffixes_and_round_trip(tmp_path: Path) -> None:
    policy = make_policy(
        tmp_path,
        thresholds=[
            {"target_ip": "2001:db8::/64", "label": "v6", "thresholds": {"tier1_pps": "50k"}}
        ],
    )
    assert policy.escalation.tiers[2].bps == 2_000_000_000
    dumped = policy.model_dump(mode="json")
    assert dumped["thresholds"] == [
        {"target_ip": "2001:db8::/64", "thresholds": {"tier1_pps": 50_000}, "label": "v6"}
    ]
    again = Policy.model_validate(dumped)
    assert again.thresholds.entries[0].ladder == policy.thresholds.entries[0].ladder


def test_intent_spec_fields_are_checked(tmp_path: Path) -> None:
    data = policy_data()
    data["escalation"]["tiers"][0] = {
        "name": "tier1",
        "bps": "100M",
        "intents": [{"type": "flowspec_rate_limit"}],
        "adapters": ["log"],
    }
    write(tmp_path, {"p.yaml": data})
    with pytest.raises(PolicyInvalid, match="needs rate"):
        load_policy(tmp_path)


def test_secrets_in_adapter_config_must_be_env_references(tmp_path: Path) -> None:
    text = (
        "adapters:\n"
        "  - name: f5\n"
        "    adapter_type: f5\n"
        "    config:\n"
        "      username: admin\n"
        "      password: s3cret\n"
    )
    err = _error(tmp_path, text)
    assert "config.password looks like a secret" in str(err)
    assert "s3cret" not in str(err)
    ok = text.replace("password: s3cret", "password: ${F5_PASSWORD}")
    write(tmp_path, {"policy.yaml": ok})
    assert load_policy(tmp_path).adapters[0].config["password"] == "${F5_PASSWORD}"


def test_error_deep_in_a_large_file_names_its_line(tmp_path: Path) -> None:
    lines = ["# allowlist\n", "allowlist:\n"]
    for i in range(3000):
        if i == 2500:
            lines.append("  - ip_address: 10.0.9.0/33\n    label: broken\n")
        else:
            lines.append(f"  - {{ip_address: 10.{i // 256}.{i % 256}.0/24, label: 'n{i}'}}\n")
    err = _error(tmp_path, "".join(lines), "allowlist.yaml")
    assert err.field == "allowlist.2500.ip_address"
    assert err.location == f"{tmp_path / 'allowlist.yaml'}:2503"


def test_policy_has_a_json_schema() -> None:
    schema = Policy.model_json_schema()
    assert schema["properties"]["allowlist"]["type"] == "array"
    assert "thresholds" in schema["properties"]["thresholds"]["items"]["properties"]
