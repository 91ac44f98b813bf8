"""core's import graph has no cycle, counting imports inside functions.

Why: two cycles (bundle <-> lora_bundle, store <-> patients) used to be hidden by
function-level imports, which Python tolerates until the day an import order changes. A
module that needs something from a module that needs it back means that something belongs
in a third module below both.
"""

from __future__ import annotations

from pathlib import Path

from tests.import_graph import find_cycle, package_graph

ROOT = Path(__file__).resolve().parents[1]


def test_core_has_no_import_cycle():
    graph = package_graph(ROOT / "core", ROOT)
    assert len(graph) > 20 and "core.archs.tier" in graph  # the whole package was read
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_dashboard_has_no_import_cycle():
    graph = package_graph(ROOT / "dashboard", ROOT)
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_detector_finds_a_cycle_and_only_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"a"}}) == ["a", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set(), "d": {"a", "c"}}) is None


def test_a_cycle_hidden_in_a_function_is_found(tmp_path):
    """The pattern that hid the old cycles: a top-level import one way, a function-level
    (relative) import back; a TYPE_CHECKING-only import is no cycle (it never runs)."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "store.py").write_text("def worklist():\n    from . import patients\n")
    (pkg / "patients.py").write_text("from pkg.store import Row\n")
    (pkg / "typed.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                  "    from pkg import store\nimport pkg.patients\n")
    graph = package_graph(pkg, tmp_path)
    assert find_cycle(graph) in (["pkg.patients", "pkg.store", "pkg.patients"],
                                 ["pkg.store", "pkg.patients", "pkg.store"])
    assert "pkg.store" not in graph["pkg.typed"]
