"""Where the hostile driver takes its decisions from: one generator, two sources of randomness.

The case generators (:mod:`verif.cases`) are driven by hypothesis (:class:`DrawChooser`,
pure-Python tests, so failing streams shrink) and by seeded :class:`random.Random` streams
(:class:`RandomChooser`, RTL co-simulation and the soak).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any, Protocol


class Chooser(Protocol):
    """Where the generator takes its decisions from."""

    def int(self, lo: int, hi: int) -> int:
        """An integer in ``[lo, hi]`` (both included)."""
        ...

    def choice(self, seq: Sequence[Any]) -> Any: ...

    def bool(self, p: float = 0.5) -> bool:
        """True with probability about ``p``."""
        ...

    def seed(self) -> int:
        """A 32-bit seed for bulk data (payload bytes)."""
        ...


class RandomChooser:
    """Decisions from a seeded :class:`random.Random` (RTL streams, soak, seeded loops)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def int(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def choice(self, seq: Sequence[Any]) -> Any:
        return seq[self.rng.randrange(len(seq))]

    def bool(self, p: float = 0.5) -> bool:
        return self.rng.random() < p

    def seed(self) -> int:
        return self.rng.getrandbits(32)


class DrawChooser:
    """Decisions drawn from hypothesis (``draw`` of ``st.data()`` or ``@st.composite``), so that
    failing streams shrink."""

    def __init__(self, draw: Callable[[Any], Any]) -> None:
        from hypothesis import strategies as st

        self._draw = draw
        self._st = st

    def int(self, lo: int, hi: int) -> int:
        return self._draw(self._st.integers(lo, hi))

    def choice(self, seq: Sequence[Any]) -> Any:
        return seq[self._draw(self._st.integers(0, len(seq) - 1))]

    def bool(self, p: float = 0.5) -> bool:
        # shrinks towards False for rare events (p < 0.5), towards True otherwise
        k = self._draw(self._st.integers(0, 99))
        return k < round(100 * p) if p >= 0.5 else k >= 100 - round(100 * p)

    def seed(self) -> int:
        return self._draw(self._st.integers(0, 2**32 - 1))
