"""The graph output list: a list of values with O(1) membership."""

from __future__ import annotations

from typing import Hashable, Iterable

Item = Hashable  # the IR's values (any hashable item works)


class OutputList(list):
    """A graph's output list with O(1) membership (`v in g.outputs`), which rewrites ask
    for every value they erase; a plain list scan made 80-layer compiles quadratic."""

    def __init__(self, items: Iterable[Item] = ()):
        super().__init__(items)
        self._pos: dict[Item, list[int]] = {}
        for i, v in enumerate(self):
            self._pos.setdefault(v, []).append(i)

    def _recount(self) -> None:
        OutputList.__init__(self, list(self))

    def __contains__(self, v) -> bool:
        return v in self._pos

    def replace(self, old: Item, new: Item) -> None:
        """Put `new` wherever `old` is, in O(occurrences)."""
        for i in self._pos.pop(old, ()):
            super().__setitem__(i, new)
            self._pos.setdefault(new, []).append(i)

    def __reduce__(self):
        return (OutputList, (list(self),))

    def append(self, v: Item) -> None:
        super().append(v)
        self._pos.setdefault(v, []).append(len(self) - 1)

    def extend(self, vs: Iterable[Item]) -> None:
        super().extend(vs)
        self._recount()

    def __iadd__(self, vs):
        self.extend(vs)
        return self

    def __setitem__(self, i, v) -> None:
        super().__setitem__(i, v)
        self._recount()

    def __delitem__(self, i) -> None:
        super().__delitem__(i)
        self._recount()

    def insert(self, i, v: Item) -> None:
        super().insert(i, v)
        self._recount()

    def pop(self, i: int = -1) -> Item:
        v = super().pop(i)
        self._recount()
        return v

    def remove(self, v: Item) -> None:
        super().remove(v)
        self._recount()

    def clear(self) -> None:
        super().clear()
        self._pos = {}
