"""Package layering and pure cores, checked on every module's imports with `ast`.

Dependencies point one way: ingest -> broker <- egress, everything may use media, control may
use all, chat stands alone. Protocol and format cores never import I/O libraries (trio, zmq,
socket, ...): they take bytes and time as arguments and return events and bytes.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("media", "broker", "ingest", "egress", "control", "chat")

# Which of our packages each package may import (itself always allowed). Modules listed in
# ALLOWED_MODULES may be imported even though their package is not allowed.
ALLOWED_PACKAGES: dict[str, frozenset[str]] = {
    "media": frozenset(),
    "broker": frozenset({"media"}),
    "ingest": frozenset({"media", "broker"}),
    "egress": frozenset({"media", "broker"}),
    "chat": frozenset({"media"}),
    "control": frozenset(PACKAGES),
}
# The workers read their part of the configuration, fire the operator's event hooks and ask
# who may connect, publish and play (control.access, .hooks and .admission import nothing of
# ours beyond broker.packet and control.config).
WORKER_CONTROL = frozenset({"control.config", "control.hooks", "control.access",
                            "control.admission"})
ALLOWED_MODULES: dict[str, frozenset[str]] = {"ingest": WORKER_CONTROL, "egress": WORKER_CONTROL}
# One module, not a package: the ingest worker process serves the live HTTP players egress
# workers pass it (server.publisher_http_players) with egress's own live server and hubs.
MODULE_EXCEPTIONS: dict[str, frozenset[str]] = {
    "ingest.worker": frozenset({"egress.live", "egress.flv_live", "egress.fmp4.live"})}

PURE_MODULES = (
    "broker/packet.py", "broker/wire.py", "broker/gop.py", "broker/feed.py",
    "broker/flvpacket.py", "egress/wsframe.py", "egress/fmp4/fragmenter.py",
    "egress/fmp4/segmenter.py", "egress/hls/playlist.py", "egress/dash/mpd.py",
    "egress/dvr/flv_recorder.py", "egress/dvr/paths.py",
    "ingest/rtmp/chunk.py", "ingest/rtmp/handshake.py", "ingest/rtmp/messages.py",
    "ingest/rtmp/session.py", "ingest/rtmp/errors.py",
    "ingest/rtsp/message.py", "ingest/rtsp/sdp.py", "ingest/rtsp/rtp.py",
    "ingest/rtsp/h264.py", "ingest/rtsp/aac.py", "ingest/rtsp/h265.py", "ingest/rtsp/dts.py",
    "ingest/rtsp/publish.py", "ingest/rtsp/play.py", "ingest/rtsp/session.py",
    "ingest/rtsp/latm.py",
    "control/config.py", "control/access.py",
)
IO_LIBRARIES = frozenset({"trio", "zmq", "socket", "hypercorn", "starlette", "anyio",
                          "asyncio"})


@dataclass(frozen=True, slots=True)
class Import:
    module: str  # absolute dotted name of what is imported
    line: int
    type_only: bool  # under `if TYPE_CHECKING:`


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def module_file(name: str) -> Path | None:
    """The file of one of our modules, if `name` is one."""
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def all_modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
                  if ".venv" not in p.parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _resolve_from(path: Path, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package.pop()  # a module's relative imports start from its package
    if node.level > 1:
        package = package[: len(package) - (node.level - 1)]
    return ".".join([*package, *([node.module] if node.module else [])])


def imports_of(path: Path, source: str | None = None) -> list[Import]:
    """Every import of a module (at any depth), absolute, marking `if TYPE_CHECKING:` ones.

    `from pkg import name` counts as importing pkg.name when that is a module, else pkg.
    """
    text = path.read_text(encoding="utf-8") if source is None else source
    tree = ast.parse(text, filename=str(path))
    found: list[Import] = []

    def visit(node: ast.AST, type_only: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, True)
            for child in node.orelse:
                visit(child, type_only)
            return
        if isinstance(node, ast.Import):
            found.extend(Import(alias.name, node.lineno, type_only) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_from(path, node)
            names = {f"{base}.{a.name}" if module_file(f"{base}.{a.name}") else base
                     for a in node.names}
            found.extend(Import(name, node.lineno, type_only) for name in sorted(names))
        for inner in ast.iter_child_nodes(node):
            visit(inner, type_only)

    visit(tree, False)
    return found


def top(name: str) -> str:
    return name.partition(".")[0]


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


MODULES = all_modules()


def test_the_packages_have_modules() -> None:
    found = {rel(p).partition("/")[0] for p in MODULES}
    assert found == set(PACKAGES)


def package_violations(path: Path, imports: list[Import]) -> list[str]:
    package = top(module_name(path))
    allowed = ALLOWED_PACKAGES[package] | {package}
    allowed_modules = (ALLOWED_MODULES.get(package, frozenset())
                       | MODULE_EXCEPTIONS.get(module_name(path), frozenset()))
    return [
        f"{rel(path)}:{imp.line} imports {imp.module}"
        + (" (under TYPE_CHECKING)" if imp.type_only else "")
        for imp in imports
        if top(imp.module) in PACKAGES and top(imp.module) not in allowed
        and imp.module not in allowed_modules
    ]


@pytest.mark.parametrize("path", MODULES, ids=rel)
def test_package_dependencies_point_one_way(path: Path) -> None:
    package = top(module_name(path))
    bad = package_violations(path, imports_of(path))
    allowed = sorted(ALLOWED_PACKAGES[package] | ALLOWED_MODULES.get(package, frozenset()))
    assert not bad, (f"{package}/ may import only itself and {allowed}:\n  "
                     + "\n  ".join(bad))


def test_egress_never_imports_ingest() -> None:
    bad = [f"{rel(p)}:{imp.line} imports {imp.module}" for p in MODULES
           if top(module_name(p)) == "egress"
           for imp in imports_of(p) if top(imp.module) == "ingest"]
    assert not bad, "egress must not import ingest:\n  " + "\n  ".join(bad)


def _pure_modules() -> list[str]:
    return sorted({*PURE_MODULES, *(rel(p) for p in MODULES if rel(p).startswith("media/"))})


def test_listed_pure_modules_exist() -> None:
    missing = [m for m in PURE_MODULES if not (ROOT / m).is_file()]
    assert not missing, f"pure modules listed here but not found: {missing}"


def io_violations(path: Path, source: str | None = None) -> list[str]:
    """I/O imports of a module, direct or through the run-time imports of our own modules."""
    bad: list[str] = []
    seen: set[Path] = set()

    def walk(path: Path, chain: tuple[str, ...], source: str | None = None) -> None:
        if path in seen:
            return
        seen.add(path)
        for imp in imports_of(path, source):
            if imp.type_only:
                continue  # annotations only: nothing is imported at run time
            here = (*chain, f"{rel(path)}:{imp.line}")
            if top(imp.module) in IO_LIBRARIES:
                bad.append(f"{' -> '.join(here)} imports {imp.module}")
            elif top(imp.module) in PACKAGES:
                # Importing a.b.c runs a/__init__.py and a/b/__init__.py as well.
                parts = imp.module.split(".")
                for i in range(1, len(parts) + 1):
                    target = module_file(".".join(parts[:i]))
                    if target is not None:
                        walk(target, here)

    walk(path, (), source)
    return bad


@pytest.mark.parametrize("module", _pure_modules())
def test_pure_modules_import_no_io(module: str) -> None:
    path = ROOT / module
    assert path.is_file(), f"{module} not found"
    bad = io_violations(path)
    assert not bad, (f"pure module {module} must not import {sorted(IO_LIBRARIES)}:\n  "
                     + "\n  ".join(bad))


# --- the checker itself ----------------------------------------------------------------------


def test_checker_sees_relative_nested_and_type_checking_imports() -> None:
    # Parse a synthetic module placed (virtually) at broker/example.py.
    source = (
        "from __future__ import annotations\n"
        "from typing import TYPE_CHECKING\n"
        "import zmq.asyncio\n"
        "from . import wire\n"
        "from .packet import StreamKey\n"
        "from ..ingest.rtmp import chunk\n"
        "if TYPE_CHECKING:\n"
        "    import trio\n"
        "else:\n"
        "    import socket\n"
        "def f() -> None:\n"
        "    import egress.http\n"
    )
    path = ROOT / "broker" / "_layering_probe_never_written.py"
    found = {(i.module, i.type_only) for i in imports_of(path, source)}
    assert ("zmq.asyncio", False) in found
    assert ("broker.wire", False) in found
    assert ("broker.packet", False) in found
    assert ("ingest.rtmp.chunk", False) in found
    assert ("trio", True) in found
    assert ("socket", False) in found
    assert ("egress.http", False) in found


def test_checker_flags_package_violations() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "import media.flv\n"
        "from control import config\n"
        "if TYPE_CHECKING:\n"
        "    from ingest.worker import IngestWorker\n"
    )
    broker_probe = ROOT / "broker" / "_layering_probe_never_written.py"
    assert package_violations(broker_probe, imports_of(broker_probe, source)) == [
        "broker/_layering_probe_never_written.py:3 imports control.config",
        "broker/_layering_probe_never_written.py:5 imports ingest.worker (under TYPE_CHECKING)",
    ]
    egress_probe = ROOT / "egress" / "_layering_probe_never_written.py"
    assert package_violations(egress_probe, imports_of(egress_probe, source)) == [
        "egress/_layering_probe_never_written.py:5 imports ingest.worker (under TYPE_CHECKING)",
    ]


def test_checker_follows_our_modules_to_io_imports() -> None:
    probe = ROOT / "media" / "_layering_probe_never_written.py"
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import trio\nimport json\n"
    assert io_violations(probe, source) == []
    # broker.zsock imports trio and zmq: importing it makes a module impure.
    bad = io_violations(probe, "from broker import zsock\n")
    assert "media/_layering_probe_never_written.py:1 -> broker/zsock.py:" in bad[0]
    assert {b.rpartition(" imports ")[2] for b in bad} >= {"trio", "zmq"}
