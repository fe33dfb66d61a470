"""The packages form layers: a module imports only from its own package or a lower layer.

    primitives < consensus, ocpp_adapter, contracts < p2p, anchoring < devsen < bench, tests

Every import in every module counts (top level, in functions, under TYPE_CHECKING), and
bench may not import test modules (by putting tests/ on sys.path) either.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYER = {
    "primitives": 0,
    "consensus": 1, "ocpp_adapter": 1, "contracts": 1,
    "p2p": 2, "anchoring": 2,
    "devsen": 3,
    "bench": 4, "tests": 4,
}
PRODUCT = [p for p in LAYER if p not in ("bench", "tests")]


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def wrong_way_imports(package: str) -> list[str]:
    """Each import in `package` of a package in its own or a higher layer, as path:line: module."""
    problems = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, module in imported_modules(path):
            top = module.split(".")[0]
            if top in LAYER and top != package and LAYER[top] >= LAYER[package]:
                problems.append(f"{path.relative_to(ROOT)}:{line}: {module}")
    return problems


@pytest.mark.parametrize("package", PRODUCT)
def test_no_package_imports_its_own_or_a_higher_layer(package: str) -> None:
    assert wrong_way_imports(package) == []


def test_bench_imports_no_test_module() -> None:
    test_modules = {p.stem for p in (ROOT / "tests").rglob("*.py")}
    problems = [f"{path.relative_to(ROOT)}:{line}: {module}"
                for path in sorted((ROOT / "bench").rglob("*.py"))
                for line, module in imported_modules(path)
                if module.split(".")[0] in test_modules | {"tests"}]
    assert problems == []


def test_the_check_sees_a_wrong_way_import(tmp_path: Path) -> None:
    """The walk finds imports inside functions too (a lazy import is still a dependency)."""
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from devsen.node import x\n    import p2p.host\n")
    assert imported_modules(module) == [(2, "devsen.node"), (3, "p2p.host")]
