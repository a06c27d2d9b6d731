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


def test_only_progress_imports_tqdm():
    users = [p.name for pkg in OURS for p in (ROOT / pkg).rglob("*.py") if "tqdm" in imported_names(p)]
    assert users == ["progress.py"]


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
