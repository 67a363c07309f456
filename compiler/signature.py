"""Operand and result names of each op kind, and how a name maps to a position.

The op registry declares every op's names once (`x`; `bias?` optional; `xs*` variadic,
last only) and records them here, so that `Op.operand("seq_lens_encoder")` can find a
position without the IR importing the op registry (which imports the IR).

Positions follow from the count: required names take one slot each, optional names
are filled in declaration order while slots remain, and a variadic name takes the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

Slot = int | slice | None  # a position, a variadic run, or an absent optional


def _plain(name: str) -> str:
    return name.rstrip("?*")


@dataclass(frozen=True)
class Names:
    """One side (operands or results) of an op's signature."""

    kind: str
    side: str  # "operand" | "result"
    names: tuple[str, ...]
    _layouts: dict[int, dict[str, Slot]] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        starred = [i for i, n in enumerate(self.names) if n.endswith("*")]
        if starred and starred != [len(self.names) - 1]:
            raise ValueError(f"op '{self.kind}': only the last {self.side} may be variadic")
        plain = [_plain(n) for n in self.names]
        if len(set(plain)) != len(plain):
            raise ValueError(f"op '{self.kind}': two {self.side}s share a name in {self.names}")

    @property
    def plain(self) -> tuple[str, ...]:
        """The names without their `?` / `*` markers."""
        return tuple(_plain(n) for n in self.names)

    def layout(self, count: int) -> dict[str, Slot]:
        """Where each name sits among `count` values (cached per count)."""
        got = self._layouts.get(count)
        if got is None:
            got = self._layouts[count] = self._compute(count)
        return got

    def _compute(self, count: int) -> dict[str, Slot]:
        required = sum(1 for n in self.names if not n.endswith(("?", "*")))
        optional = sum(1 for n in self.names if n.endswith("?"))
        extra = count - required
        present = min(max(extra, 0), optional)
        rest = extra - present
        if extra < 0 or (rest > 0 and not (self.names and self.names[-1].endswith("*"))):
            raise ValueError(f"op '{self.kind}' has {count} {self.side}s, which its "
                             f"signature ({', '.join(self.names) or 'none'}) cannot name")
        out: dict[str, Slot] = {}
        pos = 0
        for n in self.names:
            if n.endswith("*"):
                out[_plain(n)], pos = slice(pos, pos + rest), pos + rest
            elif n.endswith("?") and present == 0:
                out[_plain(n)] = None
            else:
                present -= n.endswith("?")
                out[n.rstrip("?")], pos = pos, pos + 1
        return out

    def positional(self, named: Mapping[str, Any]) -> list:
        """The values of `named` (name → value, a list for a variadic name, None or left out
        for an absent optional) in declaration order."""
        unknown = sorted(set(named) - set(self.plain))
        if unknown:
            raise ValueError(f"op '{self.kind}' has no {self.side} '{unknown[0]}' "
                             f"({self.side}s: {', '.join(self.plain) or 'none'})")
        out: list = []
        skipped = None
        for n in self.names:
            v = named.get(_plain(n))
            if v is None and not n.endswith("*"):
                if not n.endswith("?"):
                    raise ValueError(f"op '{self.kind}': {self.side} '{n}' is required")
                skipped = skipped or n
                continue
            if skipped is not None:
                raise ValueError(f"op '{self.kind}': {self.side} '{_plain(n)}' cannot be given "
                                 f"without '{_plain(skipped)}'")
            if n.endswith("*"):
                out.extend(v or [])
            else:
                out.append(v)
        return out

    def slot(self, name: str, count: int) -> Slot:
        """The slot of `name` among `count` values; a ValueError names the known ones."""
        layout = self.layout(count)
        if name not in layout:
            raise ValueError(f"op '{self.kind}' has no {self.side} '{name}' "
                             f"({self.side}s: {', '.join(self.plain) or 'none'})")
        return layout[name]


@dataclass(frozen=True)
class Signature:
    """The operand and result names of one op kind."""

    operands: Names
    results: Names


SIGNATURES: dict[str, Signature] = {}


def declare(kind: str, operands: tuple[str, ...], results: tuple[str, ...]) -> Signature:
    """Record the names of op `kind` (called by the op registry's `defop`)."""
    sig = Signature(Names(kind, "operand", tuple(operands)), Names(kind, "result", tuple(results)))
    SIGNATURES[kind] = sig
    return sig


def signature(kind: str) -> Signature:
    """The declared names of op `kind`; a ValueError when no op of that kind is declared."""
    try:
        return SIGNATURES[kind]
    except KeyError:
        raise ValueError(f"op '{kind}' has no declared signature") from None
