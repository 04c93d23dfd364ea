"""Architecture rules: the core imports no chat SDK and no provider wire format; only
``storage/`` writes SQL."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN_IN_CORE = ("slack_bolt", "slack_sdk", "discord", "httpx", "aiohttp", "adapters")
SQL = re.compile(
    r"\b(select\s.+\sfrom|insert\s+into|update\s+\w+\s+set|delete\s+from|"
    r"create\s+table)\b",
    re.IGNORECASE,
)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_core_imports_no_chat_sdk_or_provider_wire_format() -> None:
    offenders = {}
    for path in (ROOT / "bot").rglob("*.py"):
        bad = _imports(path) & set(FORBIDDEN_IN_CORE)
        if bad:
            offenders[path.name] = bad
    assert offenders == {}


def test_the_core_finds_no_adapter_even_by_name() -> None:
    """Which providers and surfaces exist is found at the edge (``adapters/__init__.py``);
    the core does not name the package, not even in an ``importlib`` string."""
    offenders = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "bot").rglob("*.py")
        if re.search(r"[\"']adapters[.\"']", path.read_text(encoding="utf-8"))
    ]
    assert offenders == []


def test_only_storage_writes_sql() -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for folder in ("bot", "adapters")
        for path in (ROOT / folder).rglob("*.py")
        if SQL.search(path.read_text(encoding="utf-8"))
    ]
    assert offenders == []


def test_every_module_has_a_logger_and_a_docstring() -> None:
    for folder in ("bot", "adapters", "storage"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            tree = ast.parse(text)
            assert ast.get_docstring(tree), f"{path} has no module docstring"
            if path.name != "__init__.py":
                assert "log = logging.getLogger(__name__)" in text, f"{path} has no logger"


def test_only_storage_talks_to_sqlite() -> None:
    """The database's own errors and types stay in ``storage/``: callers get the store's
    answers (None for a taken name, ``LimitReached`` for a cap)."""
    offenders = [
        str(path.relative_to(ROOT))
        for folder in ("bot", "adapters")
        for path in (ROOT / folder).rglob("*.py")
        if "sqlite3" in _imports(path)
    ]
    assert offenders == []


def test_chat_surfaces_get_a_narrow_context() -> None:
    """A chat surface works through its ``SurfaceContext`` (the core's front door, its outbox,
    settings): it imports neither the store nor the composition root's service bag."""
    offenders = {}
    for path in (ROOT / "adapters").glob("*.py"):
        if path.name in ("__init__.py", "shell.py"):  # the composition root's edge
            continue
        text = path.read_text(encoding="utf-8")
        bad = {"storage", "bot.app"} & {
            node.module
            for node in ast.walk(ast.parse(text))
            if isinstance(node, ast.ImportFrom) and node.module
        } | ({"Services"} if re.search(r"\bServices\b", text) else set())
        if "storage" in _imports(path):
            bad.add("storage")
        if bad:
            offenders[path.name] = bad
    assert offenders == {}
