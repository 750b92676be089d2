"""The declared dependencies are the ones the code imports, and the installed ones satisfy them."""

from __future__ import annotations

import ast
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

import polytask

SOURCES = Path(polytask.__file__).parent


def _imported_top_level_modules() -> set[str]:
    modules = set()
    for path in SOURCES.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    return modules - set(sys.stdlib_module_names) - {"polytask"}


def _declared() -> dict[str, Requirement]:
    requirements = [Requirement(r) for r in metadata.requires("polytask") or []]
    return {metadata_name(r.name): r for r in requirements}


def metadata_name(name: str) -> str:
    return name.lower().replace("_", "-")


def test_every_imported_package_is_declared():
    """A package the code imports but does not declare (joblib was one) works only by the
    accident of another package's dependencies."""
    owners = metadata.packages_distributions()
    declared = _declared()
    undeclared = {
        module: owners.get(module, [module])
        for module in _imported_top_level_modules()
        if not any(metadata_name(d) in declared for d in owners.get(module, [module]))
    }
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"


def test_installed_versions_satisfy_the_declared_ranges():
    unmet = []
    for name, requirement in _declared().items():
        try:  # an extra's requirement counts where its package is installed
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        if not requirement.specifier.contains(version, prereleases=True):
            unmet.append(f"{name} {version} not in {requirement.specifier}")
    assert not unmet, unmet
