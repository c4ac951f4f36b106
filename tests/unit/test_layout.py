"""The layout stays readable (issue 17): no module in ``service/`` or ``schemas/`` over 400 lines, no
class over 300, and no two test modules under ``tests/`` with one base name (pytest imports a
test module by its base name where its folder is no package, and the names should say what each holds).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("service", "schemas")
MAX_MODULE_LINES = 400
MAX_CLASS_LINES = 300


def _modules() -> list[Path]:
    return sorted(path for package in PACKAGES for path in (ROOT / package).rglob("*.py"))


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name


def long_modules(paths: list[Path], limit: int = MAX_MODULE_LINES) -> list[str]:
    """The modules over ``limit`` lines, each with its length."""
    found = []
    for path in paths:
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > limit:
            found.append(f"{_shown(path)}: {lines} lines")
    return found


def long_classes(paths: list[Path], limit: int = MAX_CLASS_LINES) -> list[str]:
    """The classes (nested ones too) over ``limit`` lines, decorators included, each with its length."""
    found = []
    for path in paths:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.ClassDef) or node.end_lineno is None:
                continue
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            lines = node.end_lineno - first + 1
            if lines > limit:
                found.append(f"{_shown(path)}: class {node.name}: {lines} lines")
    return found


def shared_test_names(root: Path) -> list[str]:
    """The base names two or more test modules under ``root`` share, with their paths."""
    by_name: dict[str, list[str]] = defaultdict(list)
    for path in sorted(root.rglob("test_*.py")):
        by_name[path.name].append(str(path.relative_to(root.parent)))
    return [f"{name}: {', '.join(paths)}" for name, paths in sorted(by_name.items()) if len(paths) > 1]


def test_the_checks_see_the_packages() -> None:
    modules = _modules()
    assert ROOT / "service" / "cli.py" in modules
    assert ROOT / "schemas" / "events.py" in modules
    assert len(modules) > 40


def test_no_module_is_over_400_lines() -> None:
    found = long_modules(_modules())
    assert not found, "split each along a seam (docs/development.md draws the layout):\n" + "\n".join(found)


def test_no_class_is_over_300_lines() -> None:
    found = long_classes(_modules())
    assert not found, "\n".join(found)


def test_no_two_test_modules_share_a_name() -> None:
    found = shared_test_names(ROOT / "tests")
    assert not found, "rename them to say what each holds:\n" + "\n".join(found)


def test_the_checks_find_what_they_look_for(tmp_path: Path) -> None:
    long = tmp_path / "long.py"
    body = "\n".join(f"    x{i} = {i}" for i in range(300))
    long.write_text(f"@decorated\nclass Long:\n{body}\n\n\nclass Short:\n    pass\n", encoding="utf-8")
    assert long_modules([long], limit=305) == ["long.py: 306 lines"]
    assert long_modules([long], limit=306) == []
    assert long_classes([long], limit=301) == ["long.py: class Long: 302 lines"]
    assert long_classes([long], limit=302) == []
    (tmp_path / "tests" / "unit").mkdir(parents=True)
    (tmp_path / "tests" / "other").mkdir()
    for folder in ("unit", "other"):
        (tmp_path / "tests" / folder / "test_same.py").write_text("", encoding="utf-8")
    (tmp_path / "tests" / "unit" / "test_alone.py").write_text("", encoding="utf-8")
    assert shared_test_names(tmp_path / "tests") == [
        "test_same.py: tests/other/test_same.py, tests/unit/test_same.py"
    ]
