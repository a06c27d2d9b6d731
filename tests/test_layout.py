"""The dependency rule: ftpproto imports nothing of ours; server and client never import each other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
OURS = {"ftpproto", "ftpserver", "ftpclient"}
ALLOWED = {
    "ftpproto": {"ftpproto"},
    "ftpserver": {"ftpproto", "ftpserver"},
    "ftpclient": {"ftpproto", "ftpclient"},
}


def imported_packages(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names & OURS


@pytest.mark.parametrize("package", sorted(OURS))
def test_dependency_rule(package):
    files = list((ROOT / package).rglob("*.py"))
    assert files
    for path in files:
        assert imported_packages(path) <= ALLOWED[package], path


def test_only_the_bars_module_imports_tqdm():
    users = [p.name for pkg in OURS for p in (ROOT / pkg).rglob("*.py") if "tqdm" in imported_names(p)]
    assert users == ["bars.py"]


def imported_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    return names | {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}


def test_every_package_of_ours_is_in_the_distribution():
    """A non-editable install ships what setup.cfg finds: every folder with an __init__.py."""
    import configparser

    from setuptools import find_packages

    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    include = [p.strip() for p in config["options.packages.find"]["include"].split(",")]
    shipped = set(find_packages(str(ROOT), include=include))
    ours = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for package in OURS
        for p in (ROOT / package).rglob("__init__.py")
    }
    assert config["options"]["packages"].strip() == "find:" and ours <= shipped


# -- the pure core of the protocol, and no import cycles ---------------------------------

PURE = ["errors", "framing", "messages", "paths", "units", "states", "__init__"]
IO_MODULES = {"socket", "ssl", "select", "selectors", "threading", "queue", "time", "os", "io", "asyncio"}


def test_the_protocol_core_does_no_io():
    """ftpproto's own modules are pure: sockets, threads, clocks and files live in ftpproto.io."""
    core = {p.stem for p in (ROOT / "ftpproto").glob("*.py")}
    assert core == set(PURE), "a new module in ftpproto's core: add it to PURE, or put it in ftpproto/io"
    for name in PURE:
        tree = ast.parse((ROOT / "ftpproto" / f"{name}.py").read_text())
        imported = {
            a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
        }
        imported |= {
            n.module.split(".")[0]
            for n in ast.walk(tree)
            if isinstance(n, ast.ImportFrom) and n.level == 0 and n.module
        }
        relative = {
            n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level and n.module
        }
        assert not imported & IO_MODULES, (name, imported & IO_MODULES)
        assert not any(module == "io" or module.startswith("io.") for module in relative), name
        calls = {
            n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
        }
        assert "open" not in calls and "print" not in calls, name


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node, less the bodies of `if TYPE_CHECKING:` (imports for type hints only,
    which never run and so can make no cycle)."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            skipped |= {id(inner) for statement in node.body for inner in ast.walk(statement)}
    return [node for node in ast.walk(tree) if id(node) not in skipped]


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of ours it imports when it runs, anywhere in it (inside functions too)."""
    files = {module_name(p): p for package in OURS for p in (ROOT / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in runtime_nodes(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                targets = [module] + [f"{module}.{alias.name}" for alias in node.names]
            else:
                continue
            edges |= {target for target in targets if target in files and target != name}
        graph[name] = edges
    return graph


def test_no_import_cycles():
    graph = import_graph()
    assert graph.get("ftpclient.cli"), "the graph found no imports: the test is broken"
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                cycle = [*trail[trail.index(target) :], target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, [*trail, target])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
