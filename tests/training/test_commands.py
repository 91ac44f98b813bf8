"""The one-line commands directly in training/ run the moved modules, and every command a
shipped bundle's manifest records (provenance.command) still names a module that exists.

Why: training/ was regrouped into folders (issue 36); a manifest says how its bundle was made,
and a reader who reruns that command must not meet ModuleNotFoundError.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
OLD_NAMES = {"training.crossval": "training.evaluation.crossval",
             "training.import_retfound": "training.interchange.import_retfound",
             "training.distill_encoder": "training.pretraining.distill_encoder",
             "training.multi_source": "training.evaluation.multi_source"}


@pytest.mark.parametrize("old", sorted(OLD_NAMES))
def test_an_old_name_runs_the_moved_command(old):
    assert importlib.import_module(old).main is importlib.import_module(OLD_NAMES[old]).main


@pytest.mark.parametrize("manifest", sorted((REPO / "models").glob("*/manifest.json")),
                         ids=lambda p: p.parent.name)
def test_a_shipped_manifest_command_names_a_module_that_exists(manifest):
    command = (json.loads(manifest.read_text(encoding="utf-8")).get("provenance") or {}).get(
        "command") or ""
    found = re.search(r"-m\s+(\S+)", command)
    if found is None:
        pytest.skip(f"no python -m command recorded: {command!r}")
    assert importlib.util.find_spec(found.group(1)) is not None, command
