"""The layout's promises: imports point one way, and the CLI starts without loading torch."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import appliance

pytestmark = pytest.mark.fast  # a second or two at most, no gpg: in `./run test --fast`

PACKAGE = Path(appliance.__file__).parent
# Bottom to top: a part may import only parts of strictly lower layers (and itself).
LAYERS = [
    {"children"},  # starts every child process; imports nothing of the appliance, so even layer 0 may use it
    {"__init__", "editor_scratch", "errors", "fsutil", "hardening", "paths", "printable", "progress", "untrusted_json", "utc"},
    {"state", "state_files", "overlay"},
    {"vault", "trust"},
    {"journal", "runtime", "presets"},
    {"store", "training"},
    {"erase", "image"},
    {"emergency"},
    {"demo", "service"},
    {"ui", "api"},
    {"cli"},
    {"__main__"},
]
RANK = {part: n for n, layer in enumerate(LAYERS) for part in layer}


def _imported_parts(path: Path) -> set[str]:
    """The top-level parts of `appliance` a module imports (relative or absolute)."""
    rel = path.relative_to(PACKAGE).with_suffix("").parts
    parts = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            here = list(rel[:-1])[: len(rel) - node.level] if node.level > 1 else list(rel[:-1])
            target = here + (node.module.split(".") if node.module else [])
            parts |= {target[0]} if target else {a.name for a in node.names}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            parts |= {n.split(".")[1] for n in names if n and n.startswith("appliance.")}
    return {"__init__" if p == "__version__" else p for p in parts}


def test_imports_point_down_the_layers():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        part = path.relative_to(PACKAGE).with_suffix("").parts[0]
        assert part in RANK, f"{part} is in no layer of this test: place it"
        wrong += [
            f"{path.relative_to(PACKAGE)} imports {p}" for p in _imported_parts(path) if p != part and RANK[p] >= RANK[part]
        ]
    assert not wrong, wrong


def test_the_cli_starts_without_torch():
    code = "import sys, appliance.cli.main; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
