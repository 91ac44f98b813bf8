"""Imports flow one way: dashboard -> core, training -> core. core never imports the others,
and the dashboard never imports training (it serves bundles; it does not train them).

Relative imports count (resolved against the file's package), and so do imports inside
functions and under TYPE_CHECKING: a boundary is about what a package may know of.
"""

from __future__ import annotations

from pathlib import Path

from tests.import_graph import imports_of

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"core": {"streamlit", "dashboard", "training"}, "training": {"streamlit", "dashboard"},
             "dashboard": {"training"}}


def _imported_roots(path: Path, root: Path = ROOT) -> set[str]:
    return {name.split(".")[0] for name in imports_of(path, root)}


def test_packages_do_not_import_upwards():
    offenders = []
    for package, banned in FORBIDDEN.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            bad = _imported_roots(path) & banned
            if bad:
                offenders.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert offenders == []


def test_checker_catches_a_violation(tmp_path):
    bad = tmp_path / "x.py"
    bad.write_text("import os\nfrom streamlit import runtime\n")
    assert "streamlit" in _imported_roots(bad)


def test_checker_resolves_relative_and_hidden_imports(tmp_path):
    """Relative imports resolve against the file's package (so `from ..state import x` in
    dashboard/views is dashboard.state, and a relative import in core can never be read as an
    allowed one by mistake), and a function-level import is an import too."""
    views = tmp_path / "dashboard" / "views"
    views.mkdir(parents=True)
    page = views / "page.py"
    page.write_text("from . import widgets\nfrom ..state import session\n"
                    "def run():\n    from training.trainer.run import main\n    return main\n")
    assert imports_of(page, tmp_path) == {"dashboard.views", "dashboard.views.widgets",
                                          "dashboard.state", "dashboard.state.session",
                                          "training.trainer.run", "training.trainer.run.main"}
    assert _imported_roots(page, tmp_path) & FORBIDDEN["dashboard"] == {"training"}
