"""Secret values: resolved late, kept in memory only, masked in everything Airlock writes."""

from __future__ import annotations

MASK = "****"
MIN_MASKED_LENGTH = 4


class Masker:
    """Replaces every known secret value in a text with ``****``.

    Values shorter than four characters are not masked (they would mangle ordinary text and
    are too short to be secrets worth the name).
    """

    def __init__(self, *values: str) -> None:
        self._values: list[str] = []
        self.add(*values)

    def add(self, *values: str) -> None:
        fresh = {v for v in values if len(v) >= MIN_MASKED_LENGTH} - set(self._values)
        # Longest first, so a value that contains another is masked whole.
        self._values = sorted({*self._values, *fresh}, key=len, reverse=True)

    def mask(self, text: str) -> str:
        for value in self._values:
            if value in text:
                text = text.replace(value, MASK)
        return text

    @property
    def values(self) -> tuple[str, ...]:
        return tuple(self._values)

    def __bool__(self) -> bool:
        return bool(self._values)
