"""The rooms' shape (CONTRIBUTING.md, "Rooms"): small functions in the server. The import
rules themselves are import-linter contracts (pyproject.toml), run by `make lint`."""

import ast
from pathlib import Path

import pytest

from tests import rooms

SERVER = Path(__file__).resolve().parent.parent / "gateway" / "server"
MAX_LINES = 60


def long_functions(root: Path, limit: int) -> list[str]:
    """Every function (methods and nested ones included) longer than `limit` lines."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    found.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({lines})")
    return found


def test_no_function_in_the_server_is_over_60_lines() -> None:
    assert long_functions(SERVER, MAX_LINES) == []


def test_the_check_finds_a_long_function(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    (tmp_path / "long.py").write_text(f"def long():\n{body}\n")
    assert long_functions(tmp_path, MAX_LINES) == [f"long.py:1 long ({MAX_LINES + 1})"]


def test_contributing_shows_the_rooms_as_make_rooms_prints_them(
    capsys: pytest.CaptureFixture[str],
) -> None:
    rooms.main()
    printed = capsys.readouterr().out.rstrip("\n")
    text = (SERVER.parent.parent / "CONTRIBUTING.md").read_text()
    after = text.split("After (`make rooms`):\n\n```\n", 1)[1].split("\n```", 1)[0]
    assert after == printed, "run make rooms and paste its output into CONTRIBUTING.md"
