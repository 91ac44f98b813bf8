"""Per-session memo of expensive results, so a slider move never recomputes a prediction.

Streamlit reruns the whole page script on every widget change. Results are keyed by what
determines them (photo fingerprint, bundle key, method, target...) and kept in
st.session_state, bounded so a long session does not grow without limit.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

import streamlit as st

T = TypeVar("T")
_STORE_KEY = "_dr_memo"
MAX_ENTRIES = 256


def _store() -> OrderedDict:
    if _STORE_KEY not in st.session_state:
        st.session_state[_STORE_KEY] = OrderedDict()
    return st.session_state[_STORE_KEY]


def remembered(key: Hashable, compute: Callable[[], T]) -> T:
    """Return the session's stored value for `key`, computing (and storing) it once."""
    memo = _store()
    if key in memo:
        memo.move_to_end(key)
        return memo[key]
    value = compute()
    memo[key] = value
    while len(memo) > MAX_ENTRIES:
        memo.popitem(last=False)
    return value


def remembered_latest(key: Hashable, version: Hashable, compute: Callable[[], T]) -> T:
    """One stored value per `key`, recomputed when `version` changes (e.g. a slider's value).

    For large values that follow a continuous setting: keying by the setting itself would keep
    one copy per position the user ever visited.
    """
    memo = _store()
    held = memo.get(key)
    if held is not None and held[0] == version:
        memo.move_to_end(key)
        return held[1]
    value = compute()
    memo[key] = (version, value)
    memo.move_to_end(key)
    while len(memo) > MAX_ENTRIES:
        memo.popitem(last=False)
    return value


def compute_count() -> int:
    """How many results this session holds (tests use it to prove reruns do not recompute)."""
    return len(_store())


def forget(prefix: Any) -> None:
    """Drop every entry whose key starts with `prefix` (e.g. after a sign-off is stored)."""
    memo = _store()
    for key in [k for k in memo if isinstance(k, tuple) and k and k[0] == prefix]:
        del memo[key]
