"""Result pairs that read like tuples and compare equal to A1111's JSON form.

A1111 returns schedules as ``[[end_step, text], ...]`` and emphasis as ``[[text, weight], ...]``; tools and
test vectors store them as JSON lists. Our public functions return named 2-tuples, which also compare
equal to the same two values given as a list, so ``get_schedule(p, 20) == a1111_json`` holds either way.
"""

from __future__ import annotations


class _A1111Pair(tuple):
    __slots__ = ()

    def __new__(cls, first, second):
        return super().__new__(cls, (first, second))

    def __eq__(self, other):
        if isinstance(other, list):
            return len(other) == 2 and tuple.__eq__(self, tuple(other))
        return tuple.__eq__(self, other)

    def __ne__(self, other):
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    __hash__ = tuple.__hash__

    def __repr__(self) -> str:
        return repr(tuple(self))


class ScheduleEntry(_A1111Pair):
    """``(end_step, text)``: `text` is used for model calls up to and including `end_step`."""

    __slots__ = ()

    @property
    def end_step(self) -> int:
        return self[0]

    @property
    def text(self) -> str:
        return self[1]


class Fragment(_A1111Pair):
    """``(text, weight)``: a piece of prompt text and its emphasis multiplier (-1 marks BREAK)."""

    __slots__ = ()

    @property
    def text(self) -> str:
        return self[0]

    @property
    def weight(self) -> float:
        return self[1]
