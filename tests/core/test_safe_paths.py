"""Roots and zips: traversal, absolute paths, symlink escape, zip-slip and zip bombs."""

from __future__ import annotations

import io
import os
import zipfile

import pytest

from core.errors import ConfigError, PathNotAllowedError
from core.safe_paths import ZipLimits, iter_zip, resolve_inside_roots, roots_from_env


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "root"
    (root / "clinic" / "day1").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "clinic" / "escape").symlink_to(outside, target_is_directory=True)
    return root, outside


def test_inside_paths_resolve(tree):
    root, _ = tree
    assert resolve_inside_roots(root / "clinic", [root]) == (root / "clinic").resolve()
    assert resolve_inside_roots("clinic/day1", [root]) == (root / "clinic" / "day1").resolve()
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_inside_roots("clinic/nope", [root])


@pytest.mark.parametrize("bad, message", [
    ("clinic/../../outside", "contains '..'"),
    ("../outside", "contains '..'"),
])
def test_traversal_refused(tree, bad, message):
    root, _ = tree
    with pytest.raises(PathNotAllowedError, match=message):
        resolve_inside_roots(bad, [root])


def test_absolute_outside_and_symlink_escape_refused(tree):
    root, outside = tree
    with pytest.raises(PathNotAllowedError, match="outside the allowed"):
        resolve_inside_roots(outside, [root])
    with pytest.raises(PathNotAllowedError, match="link that points outside"):
        resolve_inside_roots(root / "clinic" / "escape", [root])
    with pytest.raises(PathNotAllowedError, match="No screening folders"):
        resolve_inside_roots(root, [])


def test_roots_from_env(tmp_path):
    env = {"DR_SCREEN_ROOTS": f"{tmp_path}{os.pathsep}{os.pathsep}/srv/photos"}
    assert roots_from_env(env) == [tmp_path, tmp_path.__class__("/srv/photos")]
    assert roots_from_env({}) == []


def _zip(members: dict[str, bytes], compression=zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_zip_members_read_in_memory():
    data = _zip({"a/1_left.jpg": b"one", "2_right.jpg": b"two", ".hidden": b"x"})
    assert list(iter_zip(data)) == [("a/1_left.jpg", b"one"), ("2_right.jpg", b"two")]


@pytest.mark.parametrize("name", ["../evil.jpg", "a/../../evil.jpg", "/etc/evil.jpg",
                                  "C:\\evil.jpg", "\\evil.jpg"])
def test_zip_slip_refused(name):
    data = _zip({"ok.jpg": b"fine", name: b"evil"})
    with pytest.raises(PathNotAllowedError, match="unsafe name"):
        list(iter_zip(data))


def test_zip_bombs_refused():
    bomb = _zip({"bomb.jpg": b"\0" * 5_000_000}, zipfile.ZIP_DEFLATED)
    with pytest.raises(PathNotAllowedError, match="zip bombs"):
        list(iter_zip(bomb))
    many = _zip({f"{i}.jpg": b"x" for i in range(11)})
    with pytest.raises(PathNotAllowedError, match="holds 11 files"):
        list(iter_zip(many, limits=ZipLimits(max_members=10)))
    with pytest.raises(PathNotAllowedError, match="unpacks to"):
        list(iter_zip(_zip({"big.jpg": b"x" * 2000}), limits=ZipLimits(max_member_bytes=1000)))
    with pytest.raises(PathNotAllowedError, match="GB"):
        list(iter_zip(_zip({"a.jpg": b"x" * 600, "b.jpg": b"x" * 600}),
                      limits=ZipLimits(max_total_bytes=1000)))
    with pytest.raises(ConfigError, match="not a valid zip"):
        list(iter_zip(b"not a zip at all"))
