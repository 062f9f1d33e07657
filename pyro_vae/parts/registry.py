"""One registry per kind of swappable part: a name, what it is, and how to build it, in one entry.

A registry reads as a mapping from each name to its one-line description (``--help``, the README
tables), and :meth:`Registry.build` makes the part. Adding your own prior, likelihood or network to the
command line is one :meth:`Registry.add` call; passing a module to :func:`pyro_vae.build_vae` or
``train(config, vae=...)`` needs no registry at all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from pyro_vae.errors import ConfigError


class Registry(Mapping[str, str]):
    """Named parts of one kind.

    :param kind: the setting that chooses among them (``"prior"``), for messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._about: dict[str, str] = {}
        self._build: dict[str, Callable[..., Any]] = {}

    def add(self, name: str, about: str, build: Callable[..., Any]) -> None:
        """Register ``name``: ``about`` is its one-line description, ``build(...)`` makes it."""
        if name in self._about:
            raise ValueError(f"{self.kind} {name!r} is registered already")
        self._about[name] = about
        self._build[name] = build

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """The part called ``name``, built with the arguments every part of this kind takes."""
        if name not in self._build:
            raise ConfigError(f"unknown `{self.kind}={name!r}`; choose one of {', '.join(self)}")
        return self._build[name](*args, **kwargs)

    def __getitem__(self, name: str) -> str:
        return self._about[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._about)

    def __len__(self) -> int:
        return len(self._about)
