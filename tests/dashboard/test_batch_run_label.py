"""Run labels and the stalled-run note of the Batch screening page (no AppTest needed)."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta

from core.store import FileRow, Store
from dashboard.components.batch_run import run_label, stalled_note


def test_running_run_label_and_stalled_note(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    run_id = store.create_run("/clinic/today", ["m@1#a"], {})
    store.add_batch([FileRow(run_id, "1_left.jpg", "h1", "1", "left", 1)], [])
    info = store.run(run_id)
    assert "running, last photo stored under a minute ago" in run_label(info)
    assert "probably still being screened" in stalled_note(info)
    then = datetime.fromisoformat(info.last_activity)
    stale = dataclasses.replace(info, last_activity=(then - timedelta(minutes=45)).isoformat())
    assert "No photo stored for 45 min: the run stopped" in stalled_note(stale)
    assert "running, last photo stored 45 min ago" in run_label(stale)
    done = store.finish_run(run_id)
    assert stalled_note(done) is None and " - done - 1 files" in run_label(done)


def test_probability_lines_round_the_stored_threshold():
    from dashboard.components.batch_detail import _p_line

    assert _p_line("P(referable DR)", 0.84, 0.4236214169893025) == \
        "P(referable DR): **0.84** (threshold 0.424)"
    assert _p_line("P", 0.5, None).endswith("(threshold not recorded)")
    assert _p_line("P", None, 0.4) == "P: -"
    # Under 0.1 the probability keeps a third decimal, as on the Grade card: 0.0928 against a
    # stored threshold of 0.092 must not read "0.09 (threshold 0.092)" beside a "yes".
    assert _p_line("P", 0.0928, 0.092) == "P: **0.093** (threshold 0.092)"
