"""One ``Registry`` class for every kind of swappable part (backbones, heads, losses, datasets, optimizers,
schedulers): name → constructor, with the lookups that building and config validation share."""
from __future__ import annotations

import inspect
from typing import Callable, Iterator

from .errors import closest_match


def unknown_name_message(kind: str, name: str, valid: list[str]) -> str:
    """Error text for an unknown registry name: the valid names and the closest match."""
    close = closest_match(name, valid)
    hint = f" Did you mean {close!r}?" if close else ""
    return f"unknown {kind} {name!r}.{hint} Registered {kind}s: {', '.join(valid)}."


class Registry:
    """Constructors of one kind of part, by name.

    ``register`` adds one (as a decorator or a call); ``get`` returns it (an unknown name is a ``ValueError`` that
    lists the registered names and the closest match); ``names`` lists them; ``signature`` says which keyword
    arguments it accepts, which is what config validation checks a config group's keys against.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Callable] = {}
        self._kwargs_to: dict[str, Callable] = {}

    def register(self, obj: Callable | str | None = None, name: str | None = None, *,
                 kwargs_to: Callable | None = None):
        """``@registry.register`` (registered under its own ``__name__``), ``@registry.register("name")``, or
        ``registry.register(obj, "name")``. ``kwargs_to``: where ``obj`` forwards its ``**kwargs`` (e.g. a builder
        function forwarding to its class), so :meth:`signature` can list them. A name taken by another
        constructor is an error."""
        if isinstance(obj, str):
            obj, name = None, obj

        def add(fn: Callable) -> Callable:
            key = name or fn.__name__
            if key in self._entries and self._entries[key] is not fn:
                raise ValueError(f"a {self.kind} named {key!r} is already registered")
            self._entries[key] = fn
            if kwargs_to is not None:
                self._kwargs_to[key] = kwargs_to
            return fn

        return add if obj is None else add(obj)

    def unregister(self, name: str) -> Callable:
        """Remove ``name`` (tests that register throw-away parts clean up with it)."""
        self._kwargs_to.pop(name, None)
        return self._entries.pop(name)

    def get(self, name: str) -> Callable:
        """The constructor registered as ``name``."""
        if name not in self._entries:
            raise ValueError(unknown_name_message(self.kind, name, self.names()))
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def items(self) -> list[tuple[str, Callable]]:
        return sorted(self._entries.items())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def signature(self, name: str) -> tuple[list[str], bool]:
        """(the keyword arguments ``name``'s constructor accepts, whether it also takes any other keyword): the
        parameters of the function (or of the class's ``__init__``), followed through ``kwargs_to``."""
        fn: Callable | None = self.get(name)
        target = self._kwargs_to.get(name)
        accepted: list[str] = []
        while fn is not None:
            params = inspect.signature(fn).parameters.values()  # a class: its __init__ without self
            accepted += [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
            if not any(p.kind == p.VAR_KEYWORD for p in params):
                return list(dict.fromkeys(accepted)), False
            fn, target = target, None
        return list(dict.fromkeys(accepted)), True
