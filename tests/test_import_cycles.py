"""The project's import graph has no cycle, counting imports inside functions.

Why: two cycles in core (bundle <-> lora_bundle, store <-> patients) used to be hidden by
function-level imports, which Python tolerates until the day an import order changes, and
training/ had two more (config <-> guide_config; crossval -> evaluate_cross_dataset -> crossval,
with held_out, run and finalize in the loop). A module that needs something from a module that
needs it back means that something belongs in a third module below both (training.trainer.schema,
training.evaluation.bootstrap). training/'s folders import one way too, so each can be read
knowing only the folders below it.
"""

from __future__ import annotations

from pathlib import Path

from tests.import_graph import collapse, find_cycle, package_graph, project_graph

ROOT = Path(__file__).resolve().parents[1]


def test_core_has_no_import_cycle():
    graph = package_graph(ROOT / "core", ROOT)
    assert len(graph) > 20 and "core.archs.tier" in graph  # the whole package was read
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_dashboard_has_no_import_cycle():
    graph = package_graph(ROOT / "dashboard", ROOT)
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_training_has_no_import_cycle():
    graph = package_graph(ROOT / "training", ROOT)
    assert {"training.trainer.config", "training.evaluation.crossval",
            "training.pretraining.mae.engine"} <= set(graph)
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_whole_project_has_no_import_cycle():
    """Every folder at once (benchmarks and tests included): a circle through two packages is
    one too."""
    graph = project_graph(ROOT)
    assert {"core.predict", "dashboard.app", "training.trainer.run", "benchmarks.soak",
            "tests.helpers"} <= set(graph)
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


TRAINING_LAYERS = {  # each folder of training/ and the folders it may import
    "training.common": set(),
    "training.trainer": {"training.common"},
    "training.evaluation": {"training.common", "training.trainer"},
    "training.pretraining": {"training.common", "training.trainer"},
    "training.interchange": {"training.common", "training.pretraining"},
    "training.tuning": {"training.common", "training.trainer", "training.interchange"},
}


def test_training_folders_import_one_way():
    """common <- trainer <- evaluation, pretraining <- interchange <- tuning; the one-line
    commands directly in training/ may import any folder, and no folder imports them."""
    folders = collapse(package_graph(ROOT / "training", ROOT), depth=2)
    assert set(folders) - {"training"} == set(TRAINING_LAYERS), "a folder was added: place it"
    for folder, allowed in TRAINING_LAYERS.items():
        assert folders[folder] <= allowed, f"{folder} imports {sorted(folders[folder] - allowed)}"
    assert find_cycle(folders) is None


def test_the_commands_in_training_are_one_line_entry_points():
    """Modules directly in training/ are commands that call one main(); code lives in folders."""
    for path in sorted((ROOT / "training").glob("*.py")):
        if path.name == "__init__.py":
            continue
        code = [ln for ln in path.read_text(encoding="utf-8").split('"""')[-1].splitlines()
                if ln.strip()]
        assert len(code) <= 4 and code[-1].strip().startswith("sys.exit(main("), path.name


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


def test_the_old_training_circle_would_fail(tmp_path):
    """The shape training/ had: config imports guide_config at its end, guide_config imports
    config inside a function; the same check as above on a copy of that shape fails."""
    pkg = tmp_path / "training"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "config.py").write_text("class TrainConfig: ...\n"
                                   "from training.guide_config import Config  # noqa: E402\n")
    (pkg / "guide_config.py").write_text("class Config:\n    def to_train_config(self):\n"
                                         "        from training.config import TrainConfig\n"
                                         "        return TrainConfig()\n")
    assert find_cycle(package_graph(pkg, tmp_path)) == [
        "training.config", "training.guide_config", "training.config"]
