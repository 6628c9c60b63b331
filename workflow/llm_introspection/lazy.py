"""Public names of a subpackage, imported on first use (PEP 562).

A subpackage's `__init__.py` maps each of its modules to the public names the module defines;
`import llm_introspection.study` then imports none of them, and `llm_introspection.study.holm`
imports study.statistics (and only it) the first time it is read. So importing a torch-free module
of a subpackage stays torch-free and fast, though a sibling module imports torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping, Sequence
from importlib import import_module
from typing import Any


def lazy_exports(
    namespace: MutableMapping[str, Any], public: Mapping[str, Sequence[str]],
) -> tuple[list[str], Callable[[str], Any], Callable[[], list[str]]]:
    """`__all__`, `__getattr__` and `__dir__` for the package whose globals are `namespace`, from
    `public`: module name (relative to the package) -> the public names it defines. A name read
    once is kept in `namespace`, so later reads do not come back here."""
    package = namespace["__name__"]
    home = {name: module for module, names in public.items() for name in names}
    if len(home) != sum(len(names) for names in public.values()):
        raise ValueError(f"{package}: a public name is listed under two modules")

    def __getattr__(name: str) -> Any:
        module = home.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(f"{package}.{module}"), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(home))

    return list(home), __getattr__, __dir__
