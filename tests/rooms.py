"""`make rooms` (python -m tests.rooms): the gateway's rooms as CONTRIBUTING.md shows them.

Prints the package tree, each module with the first line of its docstring, then the imports
between the rooms (gateway's and gateway.server's subpackages and modules), read by grimp
(import-linter's graph library, tests/requirements.txt). The rules themselves are the
import-linter contracts in pyproject.toml (`make lint`).
"""

import ast
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parent.parent
GATEWAY = ROOT / "gateway"


def summary(path: Path) -> str:
    """The first line of the module's docstring (a package's: its __init__.py's)."""
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def tree(folder: Path, depth: int = 0) -> list[str]:
    lines = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(("_", ".")) and path.name != "__main__.py":
            continue
        if path.is_dir() and (path / "__init__.py").exists():
            lines.append(f"{'  ' * depth}{path.name}/  {summary(path / '__init__.py')}".rstrip())
            lines += tree(path, depth + 1)
        elif path.suffix == ".py":
            lines.append(f"{'  ' * depth}{path.name}  {summary(path)}".rstrip())
    return lines


def rooms(graph: grimp.ImportGraph) -> list[str]:
    """gateway's and gateway.server's children: the rooms the contracts name."""
    top = sorted(m for m in graph.find_children("gateway"))
    inner = sorted(graph.find_children("gateway.server"))
    return [m for m in top if m != "gateway.server"] + inner


def room_of(module: str, names: list[str]) -> str | None:
    matches = [r for r in names if module == r or module.startswith(r + ".")]
    return max(matches, key=len) if matches else None


def edges(graph: grimp.ImportGraph, names: list[str]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {r: set() for r in names}
    for module in graph.modules:
        here = room_of(module, names)
        if here is None:
            continue
        for imported in graph.find_modules_directly_imported_by(module):
            there = room_of(imported, names) or imported.split(".")[0]
            if there != here and there in [*names, "preprocess", "model_repository"]:
                out[here].add(there)
    return out


def short(name: str) -> str:
    return name.removeprefix("gateway.server.").removeprefix("gateway.")


def main() -> None:
    print("gateway/")
    print("\n".join("  " + line for line in tree(GATEWAY)))
    graph = grimp.build_graph("gateway", "preprocess", "model_repository")
    names = rooms(graph)
    print("\nImports between the rooms (server's rooms without the gateway.server. prefix):")
    for room, targets in edges(graph, names).items():
        if targets:
            print(f"  {short(room):14} -> {', '.join(sorted(short(t) for t in targets))}")


if __name__ == "__main__":
    main()
