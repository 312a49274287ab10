"""Named implementations of one kind (backbones, HyperCUT's f and g, loss types), each registered beside
its definition:

    LOSSES = Registry("loss type")

    @LOSSES.register("naive")
    class NaiveLoss(SequenceLoss): ...

    LOSSES["naive"]       # NaiveLoss; an unknown name raises UnknownNameError, one line naming the choices
    LOSSES.names()        # sorted: the choices of the matching command-line flag

An entry is registered where it is defined, so a registry is complete once the modules that define its
entries are imported: each package imports them (models/__init__.py, models/hypercut.py,
losses/__init__.py).
"""
from __future__ import annotations

from typing import Callable, Generic, TypeVar

from utils.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries by name. `entry(name, obj, **options)`, when given, builds what is stored from the
    decorated object and the options given to register (a backbone's constructor arguments, say);
    without it the object itself is stored and register takes no options."""

    def __init__(self, kind: str, entry: Callable[..., T] | None = None):
        self.kind = kind
        self._entry = entry
        self._entries: dict[str, T] = {}

    def register(self, name: str, **options):
        """A decorator storing its object under `name`; a name registered twice is refused."""
        if options and self._entry is None:
            raise TypeError(f"{self.kind} entries take no options, got {sorted(options)}")

        def decorate(obj):
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = self._entry(name, obj, **options) if self._entry else obj
            return obj
        return decorate

    def __getitem__(self, name: str) -> T:
        if name not in self._entries:
            raise UnknownNameError(f"unknown {self.kind} {name!r}; choose from {', '.join(self.names())}")
        return self._entries[name]

    def __contains__(self, name) -> bool:
        return name in self._entries

    def names(self) -> list[str]:
        return sorted(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._entries.items())
