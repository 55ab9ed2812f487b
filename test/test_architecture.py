"""The package's import graph points one way: cli -> report -> bags -> eval / nodes /
pipeline -> segmentation -> config / datasets / shm -> core.

Read from the source with ``ast`` (function-level imports included), so a lazy import
that goes back up a layer fails here as surely as a top-level one.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "sac_ros"

# Higher layers may import lower ones and their own; never the other way.
LAYERS = {
    "core": 0, "msg": 0,
    "config": 1, "datasets": 1, "shm": 1,
    "segmentation": 2,
    "eval": 3, "nodes": 3, "pipeline": 3,
    "bags": 4,
    "report": 5,
    "cli": 6,
}


def unit_of(module: str) -> str | None:
    """'sac_ros.eval.coder' -> 'eval'; None for the package itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "sac_ros" else None


def imports_of(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this file's package
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            if module == "sac_ros":  # from sac_ros import x
                found += [(node.lineno, f"sac_ros.{a.name}") for a in node.names]
    return found


def test_every_unit_has_a_layer():
    units = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
             if (p.suffix == ".py" and p.stem != "__init__") or (p.is_dir()
                                                                and (p / "__init__.py").exists())}
    assert units - set(LAYERS) == set(), "give new modules a layer in LAYERS"


def test_imports_point_down_the_layers():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        unit = unit_of(".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts))
        if unit is None or unit not in LAYERS:
            continue
        for line, module in imports_of(path):
            target = unit_of(module)
            if target is None or target == unit or target not in LAYERS:
                continue
            if LAYERS[target] > LAYERS[unit]:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({unit}) imports "
                             f"{module} ({target})")
    assert not wrong, "imports up the layers:\n" + "\n".join(wrong)


def test_only_the_cli_imports_the_cli():
    users = [f"{path.relative_to(PACKAGE.parent)}:{line}"
             for path in sorted(PACKAGE.rglob("*.py"))
             if PACKAGE / "cli" not in path.parents
             for line, module in imports_of(path) if unit_of(module) == "cli"]
    assert not users, users


def test_the_architecture_tables_match_the_tree():
    """Every module of core/ and eval/ has its row in docs/architecture.md, none is stale."""
    import re

    readme = (PACKAGE.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    for unit in ("core", "eval"):
        modules = {p.name for p in (PACKAGE / unit).glob("*.py") if p.stem != "__init__"}
        start = readme.index(f"(`sac_ros/{unit}/`)")
        table = readme[start:readme.index("\n\n", readme.index("| module |", start))]
        rows = set(re.findall(r"^\| `([a-z_]+\.py)` \|", table, re.MULTILINE))
        assert rows == modules, (f"{unit}/: docs/architecture.md rows {sorted(rows)} vs "
                                 f"files {sorted(modules)}")
