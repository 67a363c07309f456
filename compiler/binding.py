"""Call a function with just the named arguments it declares.

Rules, checks, pass bodies and expected-count formulas name what they read as
parameters (`lambda x, res: x.type == res.type`); the caller offers everything it
has and each function receives only its own names, so nothing is bound unused.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Iterable, Mapping


def parameter_names(fn: Callable, what: str) -> tuple[str, ...]:
    """The names `fn` declares; each must be passable by keyword (no *args / **kwargs)."""
    names = []
    for p in inspect.signature(fn).parameters.values():
        if p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            raise TypeError(f"{what}: parameter '{p.name}' must be a plain named parameter")
        names.append(p.name)
    return tuple(names)


def check_offered(names: Iterable[str], offered: Iterable[str], what: str) -> None:
    """Fail early (at declaration) when `fn` asks for a name no caller will offer."""
    offered = set(offered)
    missing = [n for n in names if n not in offered]
    if missing:
        raise TypeError(f"{what} asks for {', '.join(missing)}, which it is never given "
                        f"(it can have: {', '.join(sorted(offered)) or 'nothing'})")


def call_with(fn: Callable, names: tuple[str, ...], available: Mapping[str, Any]) -> Any:
    """`fn(name=available[name], ...)` for each of its declared `names`."""
    return fn(**{n: available[n] for n in names})
