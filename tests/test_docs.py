"""Every public example runs: the doctests of every ``polytask`` module, and every ```python
block of README.md and docs/*.md.

A Markdown file's blocks run in document order in one namespace (the README reads as one
story: the own-loop section reuses the module of "Use your own model"), each as written, in a
temporary working directory. A doctest marked ``# doctest: +SKIP`` does not run; each one must
be listed in ``KNOWN_SKIPS`` with the reason, so a new one cannot slip in unnoticed.
"""

from __future__ import annotations

import doctest
import importlib
import os
import pkgutil
import re
import traceback
from pathlib import Path

import pytest

import polytask

os.environ.setdefault("KERAS_BACKEND", "torch")  # tests/conftest.py sets it too

ROOT = Path(__file__).resolve().parents[1]
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE

# Docstrings with examples marked +SKIP (they do not run), "<module>:<docstring>" -> why.
KNOWN_SKIPS: dict[str, str] = {}


def _modules() -> list[str]:
    names = ["polytask"]
    names += [m.name for m in pkgutil.walk_packages(polytask.__path__, "polytask.")]
    return sorted(names)


MODULES = _modules()


def _doctests(name: str) -> list[doctest.DocTest]:
    module = importlib.import_module(name)
    tests = doctest.DocTestFinder().find(module, name)
    return sorted((t for t in tests if t.examples), key=lambda t: t.name)


def _skipped(test: doctest.DocTest) -> list[doctest.Example]:
    return [e for e in test.examples if e.options.get(doctest.SKIP)]


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name, tmp_path, monkeypatch):
    """Each module's docstring examples give what they show."""
    monkeypatch.chdir(tmp_path)  # an example that writes a file writes it here
    tests = _doctests(name)
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    report: list[str] = []
    for test in tests:
        runner.run(test, out=report.append)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, "".join(report)


def test_doctests_are_found():
    """The finder sees the examples (a broken walk would pass every case above vacuously)."""
    count = sum(len(t.examples) for name in MODULES for t in _doctests(name))
    assert count >= 150, count
    assert {"polytask.keras", "polytask.models._sparse", "polytask.objectives._terms"} <= set(
        MODULES
    )


def test_skipped_doctests_are_known():
    """Every ``+SKIP`` example is listed in KNOWN_SKIPS with its reason, and every listed one
    still skips (remove it from the list once it runs)."""
    found = {
        f"{name}:{test.name}" for name in MODULES for test in _doctests(name) if _skipped(test)
    }
    assert found == set(KNOWN_SKIPS), {
        "skipped but not listed": sorted(found - set(KNOWN_SKIPS)),
        "listed but no longer skipped": sorted(set(KNOWN_SKIPS) - found),
    }


FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def python_blocks(path: Path) -> list[tuple[int, str]]:
    """The ```python blocks of a Markdown file, in order, each with its first code line."""
    text = path.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in FENCE.finditer(text)]


def _documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


BLOCKS = [
    pytest.param(path, i, id=f"{path.relative_to(ROOT)}:{line}")
    for path in _documents()
    for i, (line, _) in enumerate(python_blocks(path))
]


class _Story:
    """A Markdown file's blocks, run in order in one namespace; each runs once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.blocks = python_blocks(path)
        self.namespace: dict = {"__name__": "__main__"}
        self.done = 0
        self.failed: int | None = None

    def run_through(self, index: int) -> None:
        while self.done <= index:
            if self.failed is not None:
                pytest.skip(f"an earlier block (line {self.blocks[self.failed][0]}) failed")
            line, code = self.blocks[self.done]
            # blank lines in front keep the traceback's line numbers those of the file
            source = compile("\n" * (line - 1) + code, str(self.path), "exec")
            error = None
            try:
                exec(source, self.namespace)
            except Exception:
                error = traceback.format_exc()
            if error is not None:
                self.failed = self.done
                pytest.fail(f"{self.path.name} block at line {line}:\n{error}", pytrace=False)
            self.done += 1


_STORIES: dict[Path, _Story] = {}


@pytest.mark.parametrize(("path", "index"), BLOCKS)
def test_markdown_block(path, index, tmp_path_factory, monkeypatch):
    """Each ```python block runs as written after the blocks above it in the same file."""
    story = _STORIES.setdefault(path, _Story(path))
    monkeypatch.chdir(tmp_path_factory.mktemp("markdown"))
    story.run_through(index)


def test_readme_blocks_are_found():
    blocks = python_blocks(ROOT / "README.md")
    assert len(blocks) >= 6
    assert not any(code.startswith(("make ", "polytask ")) for _, code in blocks)  # not bash
