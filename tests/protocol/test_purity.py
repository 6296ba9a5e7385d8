"""The protocol core is sans-I/O: it never imports gevent, socket, threading or time."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import geamqp.protocol

PROTOCOL_DIR = Path(geamqp.protocol.__file__).parent
REPO_ROOT = PROTOCOL_DIR.parent.parent
FORBIDDEN = {"gevent", "socket", "threading", "time", "_thread", "select", "selectors",
             "asyncio", "ssl"}


def _imported_roots(tree: ast.AST) -> set[str]:
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id == "__import__" and node.args
              and isinstance(node.args[0], ast.Constant)):
            roots.add(str(node.args[0].value).split(".")[0])
    return roots


def test_scanner_sees_every_import_form() -> None:
    source = "import time\nfrom gevent.socket import socket\nimport a.b as c\n__import__('ssl')\n"
    assert _imported_roots(ast.parse(source)) == {"time", "gevent", "a", "ssl"}


def test_no_protocol_module_imports_io_or_clock() -> None:
    files = sorted(PROTOCOL_DIR.glob("*.py"))
    assert len(files) >= 10, files  # the scan really looks at the package
    offenders = {}
    for path in files:
        bad = _imported_roots(ast.parse(path.read_text(), str(path))) & FORBIDDEN
        if bad:
            offenders[path.name] = sorted(bad)
    assert offenders == {}


_BLOCKED_RUN = textwrap.dedent(
    """
    import sys

    # Anywhere in the import graph: no event loop, no sockets, no threads.
    EVERYWHERE = EVERYWHERE_PLACEHOLDER
    # The stdlib may import time (datetime does); the core itself may not, even when
    # time is already in sys.modules, so import statements are checked at the source.
    FROM_GEAMQP = {"time", "_thread"}

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in EVERYWHERE:
                raise ImportError(f"sans-I/O core imported {name}")
            return None

    import builtins
    original_import = builtins.__import__

    def checked_import(name, globals=None, locals=None, fromlist=(), level=0):
        importer = (globals or {}).get("__name__", "")
        if (level == 0 and importer.startswith(("geamqp.protocol", "geamqp.exceptions"))
                and name.split(".")[0] in EVERYWHERE | FROM_GEAMQP):
            raise ImportError(f"{importer} imported {name}")
        return original_import(name, globals, locals, fromlist, level)

    builtins.__import__ = checked_import

    for name in list(sys.modules):
        if name.split(".")[0] in EVERYWHERE | FROM_GEAMQP:
            del sys.modules[name]
    sys.meta_path.insert(0, Blocker())

    # PACKAGE_STUB
    import geamqp.protocol
    from geamqp.protocol import events as ev, spec
    from geamqp.protocol.frames import encode_method, encode_content

    conn = geamqp.protocol.AMQPConnection(geamqp.protocol.ClientSettings(
        geamqp.protocol.PlainCredentials("guest", "guest"), heartbeat=10))
    assert conn.data_to_send() == b"AMQP\\x00\\x00\\x09\\x01"
    events = conn.receive_data(
        encode_method(0, spec.Connection.Start(0, 9, {"product": "x"}, b"PLAIN", b"en_US"))
        + encode_method(0, spec.Connection.Tune(2047, 131072, 60))
        + encode_method(0, spec.Connection.OpenOk()))
    assert isinstance(events[-1], ev.ConnectionOpened), events
    number = conn.open_channel()
    conn.receive_data(encode_method(number, spec.Channel.OpenOk()))
    conn.publish(number, "", "q", b"body")
    events = conn.receive_data(encode_content(
        number, spec.Basic.Deliver("c", 1, False, "", "q"), None, b"hello", 4096))
    assert events[0].body == b"hello", events
    conn.tick(100.0)
    conn.tick(106.0)
    assert conn.data_to_send().endswith(b"\\x08\\x00\\x00\\x00\\x00\\x00\\x00\\xce")
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in EVERYWHERE)
    assert not leaked, leaked
    print("sans-io ok")
    """
)


CORE_ONLY = {"gevent", "greenlet", "socket", "_socket", "threading", "select", "selectors",
             "asyncio", "ssl", "subprocess"}
# The package __init__ only promises to stay importable without gevent.
PACKAGE = {"gevent", "greenlet"}

# Load geamqp/protocol (and geamqp/exceptions, which it uses) without running the
# package __init__, which also pulls in the I/O side of the client.
_STUB = (
    "import types\n"
    "_pkg = types.ModuleType('geamqp')\n"
    f"_pkg.__path__ = [{str(PROTOCOL_DIR.parent)!r}]\n"
    "sys.modules['geamqp'] = _pkg\n"
)


def _script(blocked: set[str], stub: bool = True) -> str:
    script = _BLOCKED_RUN.replace("EVERYWHERE_PLACEHOLDER", f"set({sorted(blocked)!r})")
    return script.replace("# PACKAGE_STUB\n", _STUB if stub else "")


def _run_blocked(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-I", "-c", script], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=30,
                          env={"PYTHONPATH": str(REPO_ROOT)})


def test_core_imports_and_handshakes_with_io_modules_blocked() -> None:
    result = _run_blocked(_script(set(CORE_ONLY)))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "sans-io ok"


def test_package_import_needs_no_gevent() -> None:
    """`import geamqp` (the real __init__) leaves the protocol core usable without gevent."""
    result = _run_blocked(_script(PACKAGE, stub=False))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "sans-io ok"


def test_blocker_would_catch_an_import() -> None:
    """The harness fails when a geamqp module imports time, or anything imports threading."""
    fake_module = 'exec("import time", {"__name__": "geamqp.protocol.fake"})\n'
    script = _script(set(CORE_ONLY)).replace("import geamqp.protocol\n",
                                               "import geamqp.protocol\n" + fake_module, 1)
    result = _run_blocked(script)
    assert result.returncode != 0
    assert "geamqp.protocol.fake imported time" in result.stderr

    script = _script(set(CORE_ONLY)).replace("import geamqp.protocol\n",
                                               "import geamqp.protocol\nimport threading\n", 1)
    result = _run_blocked(script)
    assert result.returncode != 0
    assert "imported threading" in result.stderr
