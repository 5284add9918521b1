"""Parsed objects by their JSON text, for the catalog (its recent reads: ``storage.recent.Recent``)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

from pydantic import BaseModel

P = TypeVar("P", bound=BaseModel)


class Parsed(Generic[P]):
    """Parsed objects by their stored JSON: every turn and webhook reads agents and numbers, and parsing
    the same text again is most of that cost. Keyed by the text itself, so an edit is never served stale."""

    def __init__(self, model: type[P], size: int = 512) -> None:
        self._model = model
        self._size = size
        self._items: OrderedDict[str, P] = OrderedDict()

    def __call__(self, raw: str) -> P:
        found = self._items.get(raw)
        if found is None:
            found = self._items[raw] = self._model.model_validate_json(raw)
            if len(self._items) > self._size:
                self._items.popitem(last=False)
        else:
            self._items.move_to_end(raw)
        return found
