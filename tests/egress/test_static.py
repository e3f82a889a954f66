"""Static files: where a URL path leads (root, sub-domain folders, index files) and what it
may never reach, and conditional requests."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import pytest

from egress.static import BadPath, media_type, not_modified, resolve

if TYPE_CHECKING:
    from pathlib import Path

SUB = re.compile(r"([a-z0-9-]+)\.example\.com")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    www = tmp_path / "www"
    (www / "a" / "docs").mkdir(parents=True)
    (www / "x.txt").write_text("x")
    (www / "a" / "x.txt").write_text("a's x")
    (www / "a" / "docs" / "index.html").write_text("<p>")
    (tmp_path / "secret.txt").write_text("no")
    (www / "out").symlink_to(tmp_path / "secret.txt")
    (www / "inside").symlink_to(www / "x.txt")
    return www


def test_files_and_index(root: Path) -> None:
    assert resolve(root, "/x.txt", None, None) == root / "x.txt"
    assert resolve(root, "/a/docs/", None, None) == root / "a" / "docs" / "index.html"
    assert resolve(root, "/a/docs", None, None) == root / "a" / "docs" / "index.html"
    assert resolve(root, "/a", None, None) is None  # a folder without an index
    assert resolve(root, "/nothing", None, None) is None
    assert resolve(root, "/inside", None, None) == root / "x.txt"  # a link within the root


@pytest.mark.parametrize("path", ["/../secret.txt", "/a/../../secret.txt", "/./x.txt",
                                  "/out", "/a/..", "/.."])
def test_nothing_outside_the_root(root: Path, path: str) -> None:
    assert resolve(root, path, None, None) is None


@pytest.mark.parametrize("path", ["/x.txt\x00.html", "/a\\..\\secret.txt"])
def test_bad_paths(root: Path, path: str) -> None:
    with pytest.raises(BadPath):
        resolve(root, path, None, None)


def test_server_name_maps_a_sub_domain_to_a_folder(root: Path) -> None:
    assert resolve(root, "/x.txt", "a.example.com", SUB) == root / "a" / "x.txt"
    assert resolve(root, "/x.txt", "a.example.com:8080", SUB) == root / "a" / "x.txt"
    assert resolve(root, "/x.txt", "other.org", SUB) == root / "x.txt"  # no match: the root
    assert resolve(root, "/x.txt", "b.example.com", SUB) is None  # no such folder
    named = re.compile(r"(?P<sub>[a-z]+)\.(?:example|test)\.com")
    assert resolve(root, "/docs/", "a.test.com", named) == root / "a" / "docs" / "index.html"


def test_media_types(root: Path) -> None:
    assert media_type(root / "v.m3u8") == "application/vnd.apple.mpegurl"
    assert media_type(root / "index.mpd") == "application/dash+xml"
    assert media_type(root / "s.m4s") == "video/iso.segment"
    assert media_type(root / "r.FLV") == "video/x-flv"
    assert media_type(root / "p.js").startswith("text/javascript")
    assert media_type(root / "blob") == "application/octet-stream"


def test_not_modified() -> None:
    etag, modified = '"abc"', "Tue, 01 Dec 2026 08:00:00 GMT"
    assert not_modified(etag, modified, {"if-none-match": '"abc"'})
    assert not_modified(etag, modified, {"if-none-match": 'W/"abc", "x"'})
    assert not_modified(etag, modified, {"if-none-match": "*"})
    assert not not_modified(etag, modified, {"if-none-match": '"x"',
                                             "if-modified-since": modified})
    assert not_modified(etag, modified, {"if-modified-since": modified})
    assert not not_modified(etag, modified,
                            {"if-modified-since": "Tue, 01 Dec 2026 07:00:00 GMT"})
    assert not not_modified(etag, modified, {"if-modified-since": "garbage"})
    assert not not_modified(etag, modified, {})
