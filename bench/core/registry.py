"""One small generic registry, instantiated per kind (methods, datasets, protocols, ...).

Entries are either objects (classes, factories) or lazy ``"module:attr"`` strings that are
imported only when the entry is used, so that listing names never imports torch.

Plugins are found in three ways, none of them a hand-kept list:

* *package discovery*: every module of a package (``methods/``, ``datasets/``, ...) is read as
  text with :mod:`ast` (not imported) and each class or function decorated with
  ``@register_method("name")`` (``register_dataset``, ``register_protocol``, ...) becomes a
  lazy entry;
* *entry points*: third-party packages declare ``[project.entry-points."bench.methods"]``
  ``my_method = "my_pkg.module:MyMethod"``;
* explicit :meth:`Registry.add` calls (tests, notebooks).
"""

from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator

from bench.core.errors import UserError


class DuplicateNameError(ValueError):
    """Two entries claim the same name in one registry."""


def _marker(kind: str) -> Callable[..., Callable[[Any], Any]]:
    """A decorator factory that only records the plugin name on the object.

    The registry finds the decorator by reading the module's source, which keeps
    ``python -m bench list`` free of heavy imports; at import time nothing else happens.
    """

    def register(name: str) -> Callable[[Any], Any]:
        def deco(obj: Any) -> Any:
            obj.registry_name = name
            return obj

        return deco

    register.__name__ = f"register_{kind}"
    return register


def _decorator_names(node: ast.AST, decorator: str) -> list[str]:
    """Names given to ``@<decorator>("a", "b")`` on a def or class."""
    names: list[str] = []
    for deco in getattr(node, "decorator_list", []):
        if not isinstance(deco, ast.Call):
            continue
        func = deco.func
        fname = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if fname != decorator:
            continue
        for arg in deco.args:
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                names.append(arg.value)
    return names


def scan_package(package: str, decorator: str, root: Path | None = None) -> list[tuple[str, str]]:
    """Find ``@<decorator>("name")`` declarations in a package without importing it.

    Returns ``[(name, "package.module:attr"), ...]`` in file order.
    """
    if root is None:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            return []
        root = Path(next(iter(spec.submodule_search_locations)))
    found: list[tuple[str, str]] = []
    for path in sorted(root.glob("*.py")):
        if path.name.startswith("_"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in tree.body:
            if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
                for name in _decorator_names(node, decorator):
                    found.append((name, f"{package}.{path.stem}:{node.name}"))
    return found


def _module_source(module: str) -> str | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin).read_text(encoding="utf-8")


_CLASS_TABLES: dict[str, tuple[dict, dict]] = {}


def _class_table(module: str) -> tuple[dict[str, tuple[list[str], dict[str, str]]], dict[str, str]]:
    """({class: (base names, {attribute: string literal})}, {imported name: module}) of a module,
    read with :mod:`ast` (cached; nothing is imported but the module's parent packages)."""
    if module not in _CLASS_TABLES:
        classes: dict[str, tuple[list[str], dict[str, str]]] = {}
        imports: dict[str, str] = {}
        source = _module_source(module)
        for node in ast.parse(source).body if source else []:
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for alias in node.names:
                    imports[alias.asname or alias.name] = node.module
            elif isinstance(node, ast.ClassDef):
                attrs = {}
                for item in node.body:
                    target = item.targets[0] if isinstance(item, ast.Assign) and len(item.targets) == 1 else getattr(item, "target", None)
                    value = getattr(item, "value", None)
                    if isinstance(target, ast.Name) and isinstance(value, ast.Constant) and isinstance(value.value, str):
                        attrs[target.id] = value.value
                bases = [b.id if isinstance(b, ast.Name) else b.attr for b in node.bases if isinstance(b, (ast.Name, ast.Attribute))]
                classes[node.name] = (bases, attrs)
        _CLASS_TABLES[module] = (classes, imports)
    return _CLASS_TABLES[module]


def static_attributes(target: str, keys: tuple[str, ...]) -> dict[str, str]:
    """String class attributes ``keys`` of ``"module:Class"``, inherited ones included (depth
    first through the bases, as far as they are classes of readable modules), read from the
    source without importing it. Missing keys are absent from the result."""
    module, _, name = target.partition(":")
    out: dict[str, str] = {}
    seen: set[tuple[str, str]] = set()

    def visit(mod: str, cls: str) -> None:
        if (mod, cls) in seen or len(out) == len(keys):
            return
        seen.add((mod, cls))
        classes, imports = _class_table(mod)
        if cls not in classes:
            if cls in imports:
                visit(imports[cls], cls)
            return
        bases, attrs = classes[cls]
        for k in keys:
            if k in attrs:
                out.setdefault(k, attrs[k])
        for b in bases:
            visit(mod, b)

    visit(module, name)
    return out


class Registry:
    """Maps names to plugins of one kind.

    >>> r = Registry("toy")
    >>> r.add("a", "math:sqrt")
    >>> r.get("a")(4.0)
    2.0
    """

    def __init__(
        self,
        kind: str,
        package: str | None = None,
        entry_point_group: str | None = None,
        decorator: str = "",
        listing: str = "",
    ):
        self.kind = kind
        self.listing = listing or f"{kind}s"
        self.decorator = decorator
        self.package = package
        self.entry_point_group = entry_point_group
        self._entries: dict[str, Any] = {}
        self._loaded = False

    # -- building -------------------------------------------------------------------------
    def add(self, name: str, target: Any, *, replace: bool = False) -> None:
        """Register ``target`` (object or ``"module:attr"`` string) under ``name``."""
        if not replace and name in self._entries and self._entries[name] != target:
            raise DuplicateNameError(
                f"{self.kind} '{name}' is registered twice: {self._describe(self._entries[name])} "
                f"and {self._describe(target)}; rename one of them"
            )
        self._entries[name] = target

    def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        if self.package:
            for name, target in scan_package(self.package, self.decorator):
                self.add(name, target)
        if self.entry_point_group:
            for ep in metadata.entry_points(group=self.entry_point_group):
                self.add(ep.name, ep.value)

    @staticmethod
    def _describe(target: Any) -> str:
        if isinstance(target, str):
            return target
        return f"{getattr(target, '__module__', '?')}:{getattr(target, '__qualname__', target)}"

    # -- lookup ---------------------------------------------------------------------------
    def names(self) -> list[str]:
        self._ensure_loaded()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        self._ensure_loaded()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def target(self, name: str) -> str:
        """Where an entry lives, as ``module:attr``, without importing it."""
        self._ensure_loaded()
        self._check(name)
        return self._describe(self._entries[name])

    def static_info(self, name: str, keys: tuple[str, ...]) -> dict[str, str]:
        """String class attributes ``keys`` of an entry without importing it (imported entries:
        read from the object); see :func:`static_attributes`."""
        self._ensure_loaded()
        self._check(name)
        target = self._entries[name]
        if isinstance(target, str):
            return static_attributes(target, keys)
        return {k: getattr(target, k) for k in keys if isinstance(getattr(target, k, None), str)}

    def suggest(self, name: str) -> list[str]:
        self._ensure_loaded()
        return difflib.get_close_matches(name, list(self._entries), n=3, cutoff=0.5)

    def _check(self, name: str) -> None:
        if name not in self._entries:
            hint = self.suggest(name)
            did = f"did you mean {', '.join(repr(h) for h in hint)}? " if hint else ""
            raise UserError(
                f"unknown {self.kind} '{name}': {did}"
                f"see `python -m bench list {self.listing}` for the {len(self._entries)} known names"
            )

    def get(self, name: str) -> Any:
        """The registered object; lazy entries are imported on first use."""
        self._ensure_loaded()
        self._check(name)
        target = self._entries[name]
        if isinstance(target, str):
            module, _, attr = target.partition(":")
            obj: Any = importlib.import_module(module)
            for part in attr.split("."):
                obj = getattr(obj, part)
            self._entries[name] = obj
            target = obj
        return target


register_method = _marker("method")
register_dataset = _marker("dataset")
register_protocol = _marker("protocol")
register_encoder = _marker("encoder")
register_prompts = _marker("prompts")

METHODS = Registry("method", "methods", "bench.methods", "register_method")
DATASETS = Registry("dataset", "datasets", "bench.datasets", "register_dataset")
PROTOCOLS = Registry("protocol", "datasets", "bench.protocols", "register_protocol")
ENCODERS = Registry("text encoder", "priors", "bench.encoders", "register_encoder", "encoders")
PROMPTS = Registry("prompt set", "priors", "bench.prompts", "register_prompts", "prompts")

REGISTRIES = {
    "methods": METHODS,
    "datasets": DATASETS,
    "protocols": PROTOCOLS,
    "encoders": ENCODERS,
    "prompts": PROMPTS,
}
