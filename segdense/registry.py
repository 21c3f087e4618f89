"""Name → builder registries (backbones, heads, losses, datasets) with errors that list the names."""
from __future__ import annotations

import difflib
from typing import Callable


def unknown_name_message(kind: str, name: str, valid: list[str]) -> str:
    """Error text for an unknown registry name: the valid names and the closest match."""
    close = difflib.get_close_matches(str(name), valid, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"unknown {kind} {name!r}.{hint} Registered {kind}s: {', '.join(valid)}."


class Registry(dict):
    """Builders of one kind of part, by name (a dict, so ``name in registry`` and ``registry[name]``
    work as usual)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def register(self, fn_or_name: Callable | str | None = None):
        """Decorator: ``@registry.register`` (the function's or class's own name) or
        ``@registry.register("name")``. A name taken by another builder is an error."""

        def decorator(fn: Callable, name: str | None = None) -> Callable:
            key = name or fn.__name__
            if key in self and self[key] is not fn:
                raise ValueError(f"a {self.kind} named {key!r} is already registered")
            self[key] = fn
            return fn

        if callable(fn_or_name):
            return decorator(fn_or_name)
        return lambda fn: decorator(fn, fn_or_name)

    def names(self) -> list[str]:
        return sorted(self)

    def builder(self, name: str) -> Callable:
        """The builder registered as ``name``; an unknown name raises ``ValueError`` listing the
        registered names and the closest match."""
        if name not in self:
            raise ValueError(unknown_name_message(self.kind, name, self.names()))
        return self[name]
