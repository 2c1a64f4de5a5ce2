"""The package's layout: data flows one way between subpackages, and no module name is used twice.

The order is the one the README states: io at the bottom, then sources and standalone networks, then nnU-Net
plumbing and trainers, then measurement, segmentation and evaluation, then workflows and the CLI.
"""
from __future__ import annotations

import ast
import collections
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "nnunet_ext"

# subpackage -> the subpackages it may import (besides itself)
ALLOWED = {
    "io": set(),
    "dataset_conversion": {"io"},
    "phantoms": {"io"},
    "networks": {"io"},
    "nnunet": {"io", "networks"},
    "trainers": {"io", "networks", "nnunet"},
    "morphometrics": {"io"},
    "segmentation": {"io", "nnunet", "morphometrics"},
    "evaluation": {"io", "morphometrics"},
    "experiment": {"io", "dataset_conversion", "nnunet", "trainers", "evaluation"},
    "report": {"io"},
}


def _imports(path: Path) -> set[str]:
    """Top-level nnunet_ext subpackages a module imports (at any depth of the file)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nnunet_ext."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("nnunet_ext."))
    return found


def test_subpackages_import_only_those_below_them():
    wrong = []
    for package, allowed in ALLOWED.items():
        folder = PACKAGE / package
        assert folder.is_dir(), f"{folder} missing"
        for module in folder.rglob("*.py"):
            for imported in _imports(module) - allowed - {package}:
                wrong.append(f"{module.relative_to(PACKAGE)} imports nnunet_ext.{imported}")
    assert not wrong, "\n".join(wrong)


def test_every_subpackage_is_placed():
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert packages == set(ALLOWED), f"place new subpackages in ALLOWED: {packages ^ set(ALLOWED)}"


def test_module_names_do_not_collide():
    names = collections.defaultdict(list)
    for module in PACKAGE.rglob("*.py"):
        if module.name not in ("__init__.py", "cli.py") and "nnunet_search_path" not in module.parts:
            names[module.name].append(str(module.relative_to(PACKAGE)))
    assert not {n: p for n, p in names.items() if len(p) > 1}
