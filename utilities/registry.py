"""Name -> class registries for the pluggable parts of the codebase.

Every concept folder (``architectures/``, ``batchminer/``, ``criteria/``, ``datasampler/``,
``datasets/``, ``metrics/``) owns one :class:`Registry`. Its ``__init__.py`` calls
:meth:`Registry.import_members`, which imports every module of the folder, so adding a member
is adding one file whose class is decorated with ``@REGISTRY.register("name")``.
"""
from __future__ import annotations

import contextlib
import importlib
import pkgutil
from typing import Callable, Dict, Generic, Iterator, List, Optional, TypeVar

from utilities.errors import UserError

T = TypeVar("T")


class UnknownNameError(UserError, ValueError):
    """Raised for a name that is not registered; the message lists the valid names."""


class Registry(Generic[T]):
    """A mapping from command-line names to member classes (or factories)."""

    def __init__(self, kind: str, flag: str) -> None:
        self.kind = kind  # e.g. "criterion", used in messages
        self.flag = flag  # e.g. "--loss", used in messages
        self._members: Dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(member: T) -> T:
            if name in self._members:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._members[name] = member
            try:
                member.registry_name = name  # type: ignore[attr-defined]
            except (AttributeError, TypeError):
                pass
            return member

        return decorator

    def get(self, name: str) -> T:
        if name not in self._members:
            raise UnknownNameError(
                f"unknown {self.kind} '{name}' for {self.flag}; valid names: "
                f"{', '.join(self.names())}"
            )
        return self._members[name]

    def find(self, name: str) -> Optional[T]:
        """The member registered as ``name``, or None (for readers that tolerate other names,
        e.g. a dataset name in a sweep row; :meth:`get` refuses them)."""
        return self._members.get(name)

    def names(self) -> List[str]:
        return sorted(self._members)

    def __contains__(self, name: str) -> bool:
        return name in self._members

    @contextlib.contextmanager
    def scoped(self) -> Iterator["Registry[T]"]:
        """Members registered inside the block are forgotten when it ends (a test that drops an
        example member in, or registers a stand-in, leaves the registry as it found it)."""
        saved = dict(self._members)
        try:
            yield self
        finally:
            self._members = saved

    def import_members(self, package_name: str, package_path: List[str]) -> None:
        """Import every module of a package so that its ``@register`` decorators run."""
        for module in pkgutil.iter_modules(package_path):
            if not module.name.startswith("_"):
                importlib.import_module(f"{package_name}.{module.name}")
