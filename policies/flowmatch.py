"""FlowSpec match values (RFC 8955 section 4.2.1, RFC 8956): numeric and bitmask.

Both are held in a canonical form so that the same match written two ways compares equal:

* a numeric match is the set of values it accepts, stored as sorted, merged, inclusive
  ranges. ``"=53 =123"``, ``[123, 53]`` and ``"53,123"`` are one value; ``"!=0"`` on a
  port becomes ``>=1&<=65535``.
* a bitmask match (TCP flags, fragment) is an OR of groups, each an AND of terms; a term
  tests some bits for "any set" or (with ``=``) "all set", optionally negated (``!``).
  Terms and groups are sorted and de-duplicated.

A match that accepts no value is contradictory, and one that accepts every value says
nothing; both are refused with a message, because a rule built from either is a mistake.

Text grammar (also the canonical form):

    numeric  := conj (" " conj)*            OR of conjunctions
    conj     := cmp ("&" cmp)*              cmp := ("="|">"|">="|"<"|"<="|"!=") INT
    bitmask  := group (" " group)*          OR of groups
    group    := term ("&" term)*            term := ["!"] ["="] FLAG ("+" FLAG)*
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Self

Range = tuple[int, int]


def _merge(ranges: Iterable[Range]) -> tuple[Range, ...]:
    out: list[list[int]] = []
    for lo, hi in sorted(r for r in ranges if r[0] <= r[1]):
        if out and lo <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return tuple((lo, hi) for lo, hi in out)


def _intersect(a: Sequence[Range], b: Sequence[Range]) -> tuple[Range, ...]:
    out: list[Range] = []
    for alo, ahi in a:
        for blo, bhi in b:
            lo, hi = max(alo, blo), min(ahi, bhi)
            if lo <= hi:
                out.append((lo, hi))
    return _merge(out)


_CMP = re.compile(r"^(==|=|>=|<=|!=|>|<)?\s*(\d+)$")
_RANGE = re.compile(r"^(\d+)\s*-\s*(\d+)$")


@dataclass(frozen=True, slots=True)
class NumericMatch:
    """The set of values a numeric FlowSpec component accepts."""

    ranges: tuple[Range, ...]
    maximum: ClassVar[int] = 65535
    what: ClassVar[str] = "value"

    @classmethod
    def parse(cls, value: object) -> Self:
        """Accept an int, a string in the grammar above, ``"a-b"`` ranges, or a list of those."""
        if isinstance(value, cls):
            return value
        if isinstance(value, bool):
            raise ValueError(f"expected a {cls.what} match, got a boolean")
        if isinstance(value, int):
            alternatives: list[str] = [str(value)]
        elif isinstance(value, str):
            alternatives = [t for t in re.split(r"[\s,|]+", value.strip()) if t]
        elif isinstance(value, list | tuple):
            alternatives = []
            for item in value:
                if isinstance(item, bool) or not isinstance(item, int | str):
                    raise ValueError(f"expected integers or match strings, got {item!r}")
                alternatives.extend(t for t in re.split(r"[\s,|]+", str(item).strip()) if t)
        else:
            raise ValueError(f"expected a {cls.what} match, got {type(value).__name__}")
        if not alternatives:
            raise ValueError(f"empty {cls.what} match")
        accepted: list[Range] = []
        for alt in alternatives:
            accepted.extend(cls._conjunction(alt))
        ranges = _merge(accepted)
        if not ranges:
            raise ValueError(f"{cls.what} match {value!r} is contradictory: it accepts no value")
        if ranges == ((0, cls.maximum),):
            raise ValueError(f"{cls.what} match {value!r} accepts every value; leave it out")
        return cls(ranges)

    @classmethod
    def _conjunction(cls, text: str) -> tuple[Range, ...]:
        current: tuple[Range, ...] = ((0, cls.maximum),)
        for raw in text.split("&"):
            part = raw.strip()
            m = _RANGE.match(part)
            if m:
                lo, hi = int(m.group(1)), int(m.group(2))
                cls._check(lo, part)
                cls._check(hi, part)
                if lo > hi:
                    raise ValueError(f"{cls.what} range {part!r} is reversed")
                current = _intersect(current, ((lo, hi),))
                continue
            m = _CMP.match(part)
            if not m:
                raise ValueError(f"cannot read {cls.what} match term {part!r}")
            op, n = m.group(1) or "=", int(m.group(2))
            cls._check(n, part)
            allowed: tuple[Range, ...] = {
                "=": ((n, n),),
                "==": ((n, n),),
                ">": ((n + 1, cls.maximum),),
                ">=": ((n, cls.maximum),),
                "<": ((0, n - 1),),
                "<=": ((0, n),),
                "!=": ((0, n - 1), (n + 1, cls.maximum)),
            }[op]
            current = _intersect(current, allowed)
        return current

    @classmethod
    def _check(cls, n: int, term: str) -> None:
        if not 0 <= n <= cls.maximum:
            raise ValueError(f"{cls.what} {n} in {term!r} is out of range 0-{cls.maximum}")

    def __contains__(self, n: object) -> bool:
        return isinstance(n, int) and any(lo <= n <= hi for lo, hi in self.ranges)

    def overlaps(self, values: Iterable[int]) -> bool:
        return any(v in self for v in values)

    def terms(self) -> list[list[tuple[str, int]]]:
        """The match as an OR of AND-ed (operator, value) pairs, for renderers."""
        out: list[list[tuple[str, int]]] = []
        for lo, hi in self.ranges:
            if lo == hi:
                out.append([("=", lo)])
            elif lo == 0:
                out.append([("<=", hi)])
            elif hi == self.maximum:
                out.append([(">=", lo)])
            else:
                out.append([(">=", lo), ("<=", hi)])
        return out

    def __str__(self) -> str:
        return " ".join("&".join(f"{op}{v}" for op, v in conj) for conj in self.terms())


class PortMatch(NumericMatch):
    maximum = 65535
    what = "port"


class ByteMatch(NumericMatch):
    maximum = 255
    what = "value"


class ProtocolMatch(NumericMatch):
    maximum = 255
    what = "protocol"
    NAMES: ClassVar[dict[str, int]] = {
        "icmp": 1,
        "igmp": 2,
        "tcp": 6,
        "udp": 17,
        "gre": 47,
        "esp": 50,
        "ah": 51,
        "icmpv6": 58,
        "ipv6-icmp": 58,
        "sctp": 132,
    }

    @classmethod
    def parse(cls, value: object) -> Self:
        def name_to_num(item: object) -> object:
            if isinstance(item, str):
                return re.sub(
                    r"[A-Za-z][A-Za-z0-9-]*",
                    lambda m: cls._named(m.group(0)),
                    item,
                )
            return item

        if isinstance(value, list | tuple):
            value = [name_to_num(v) for v in value]
        else:
            value = name_to_num(value)
        return super().parse(value)

    @classmethod
    def _named(cls, name: str) -> str:
        try:
            return str(cls.NAMES[name.lower()])
        except KeyError:
            raise ValueError(
                f"unknown protocol name {name!r} (known: {', '.join(sorted(cls.NAMES))})"
            ) from None


class LengthMatch(NumericMatch):
    maximum = 65535
    what = "packet length"


class DscpMatch(NumericMatch):
    maximum = 63
    what = "DSCP"


class FlowLabelMatch(NumericMatch):
    maximum = (1 << 20) - 1
    what = "flow label"


@dataclass(frozen=True, slots=True, order=True)
class BitTerm:
    """One bitmask test: ``bits`` any set (or all set when ``match_all``), maybe negated."""

    negate: bool
    match_all: bool
    bits: int

    def test(self, value: int) -> bool:
        hit = (value & self.bits) == self.bits if self.match_all else bool(value & self.bits)
        return hit != self.negate


@dataclass(frozen=True, slots=True)
class BitmaskMatch:
    """An OR of groups of AND-ed :class:`BitTerm`; canonical when built by :meth:`parse`."""

    groups: tuple[tuple[BitTerm, ...], ...]
    FLAGS: ClassVar[dict[str, int]] = {}
    width: ClassVar[int] = 8
    what: ClassVar[str] = "bitmask"

    @classmethod
    def parse(cls, value: object) -> Self:
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            texts = [t for t in re.split(r"[\s,|]+", value.strip()) if t]
        elif isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            texts = [t for v in value for t in re.split(r"[\s,|]+", str(v).strip()) if t]
        else:
            raise ValueError(f"expected a {cls.what} match string, got {value!r}")
        if not texts:
            raise ValueError(f"empty {cls.what} match")
        groups: set[tuple[BitTerm, ...]] = set()
        for text in texts:
            terms = tuple(sorted({cls._term(t) for t in text.split("&") if t.strip()}))
            if not terms:
                raise ValueError(f"empty {cls.what} group in {value!r}")
            if not any(all(t.test(v) for t in terms) for v in range(1 << cls.width)):
                raise ValueError(f"{cls.what} group {text!r} is contradictory: nothing matches")
            groups.add(terms)
        ordered = tuple(sorted(groups))
        match = cls(ordered)
        if all(match.accepts(v) for v in range(1 << cls.width)):
            raise ValueError(f"{cls.what} match {value!r} accepts every packet; leave it out")
        return match

    @classmethod
    def _term(cls, text: str) -> BitTerm:
        text = text.strip()
        negate = text.startswith("!")
        text = text.removeprefix("!")
        match_all = text.startswith("=")
        text = text.removeprefix("=")
        bits = 0
        for raw in text.split("+"):
            name = raw.strip().lower()
            if name in cls.FLAGS:
                bits |= cls.FLAGS[name]
            elif re.fullmatch(r"0x[0-9a-f]+|\d+", name):
                n = int(name, 0)
                if not 0 < n < (1 << cls.width):
                    raise ValueError(f"{cls.what} bits {name} out of range")
                bits |= n
            else:
                known = ", ".join(cls.FLAGS)
                raise ValueError(f"unknown {cls.what} flag {name!r} (known: {known})")
        if bits == 0:
            raise ValueError(f"empty {cls.what} term")
        return BitTerm(negate=negate, match_all=match_all, bits=bits)

    def accepts(self, value: int) -> bool:
        return any(all(t.test(value) for t in group) for group in self.groups)

    def uses(self, bits: int) -> bool:
        return any(t.bits & bits for g in self.groups for t in g)

    def _name(self, bits: int) -> str:
        names = [n for n, b in self.FLAGS.items() if bits & b]
        covered = sum(b for n, b in self.FLAGS.items() if bits & b)
        if covered != bits:
            return hex(bits)
        return "+".join(names)

    def __str__(self) -> str:
        return " ".join(
            "&".join(
                ("!" if t.negate else "") + ("=" if t.match_all else "") + self._name(t.bits)
                for t in group
            )
            for group in self.groups
        )


class TcpFlagsMatch(BitmaskMatch):
    FLAGS: ClassVar[dict[str, int]] = {
        "fin": 0x01,
        "syn": 0x02,
        "rst": 0x04,
        "psh": 0x08,
        "ack": 0x10,
        "urg": 0x20,
        "ece": 0x40,
        "cwr": 0x80,
    }
    width = 8
    what = "tcp-flags"


class FragmentMatch(BitmaskMatch):
    FLAGS: ClassVar[dict[str, int]] = {
        "dont-fragment": 0x01,
        "is-fragment": 0x02,
        "first-fragment": 0x04,
        "last-fragment": 0x08,
    }
    width = 4
    what = "fragment"
