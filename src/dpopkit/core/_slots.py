"""Filling a frozen, slotted dataclass on a hot path without its generated ``__init__``.

:func:`unfrozen_twin` makes a plain class with the exact slot layout of ``cls``. An
instance of it takes ordinary attribute stores, then becomes a ``cls`` by ``__class__``
assignment, which CPython allows between classes of identical slot layout (and refuses
with TypeError otherwise, checked here once): a fraction of a microsecond, against about
2 µs for the frozen ``__init__`` of a dozen fields. The caller must set every field.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

__all__ = ["unfrozen_twin"]


def unfrozen_twin(cls: type, *, field_count: int, fill: str) -> type:
    """A class with ``cls``'s slots whose instances become ``cls`` by ``__class__`` assignment.

    Args:
        cls: a frozen dataclass with ``slots=True``.
        field_count: the number of fields ``fill`` sets; a different count stops the
            import, so that a new field cannot be left unset.
        fill: where the fields are set, named in that error.
    """
    if len(fields(cls)) != field_count:  # pragma: no cover - guards future edits
        raise RuntimeError(f"{cls.__name__} changed: update {fill}")
    twin = type(f"_{cls.__name__}Twin", (), {"__slots__": vars(cls)["__slots__"]})
    probe: Any = twin()
    probe.__class__ = cls  # raises TypeError unless the layouts match
    return twin
