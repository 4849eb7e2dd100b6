"""The layers run one way: engine/ knows no platform and no server; platforms plug in."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENGINE = ROOT / "engine"
OUTER_PACKAGES = ("serve", "connectors")
PLATFORM_NAMES = re.compile(r"supervisely|\bsly\b|labelbox|encord|kognic|picsellia", re.I)
#: Pure format modules of the platforms and of the local exports.
FORMAT_MODULES = (
    "connectors.formats.coco",
    "connectors.formats.jsonl",
    "connectors.formats.names",
    "connectors.supervisely.annotation",
    "connectors.supervisely.format",
    "connectors.supervisely.project",
    "connectors.supervisely.video_annotation",
)


def _engine_files() -> list[Path]:
    return sorted(ENGINE.rglob("*.py"))


def _imported_modules(tree: ast.AST) -> list[str]:
    """Every module an ast imports: import statements and string arguments of import calls."""
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append(node.module)
        elif isinstance(node, ast.Call):
            name = getattr(node.func, "attr", getattr(node.func, "id", ""))
            if name in ("import_module", "__import__", "find_spec"):
                found.extend(
                    arg.value
                    for arg in node.args
                    if isinstance(arg, ast.Constant) and isinstance(arg.value, str)
                )
    return found


def test_the_scan_sees_every_kind_of_import():
    source = (
        "import serve.app\nfrom connectors import x\n"
        "def f():\n    import importlib\n    importlib.import_module('serve.client')\n"
    )
    assert _imported_modules(ast.parse(source)) == [
        "serve.app",
        "connectors",
        "importlib",
        "serve.client",
    ]


def test_no_engine_module_imports_serve_or_connectors():
    offenders = [
        f"{path.relative_to(ROOT)}: {module}"
        for path in _engine_files()
        for module in _imported_modules(ast.parse(path.read_text(encoding="utf-8")))
        if module.split(".")[0] in OUTER_PACKAGES
    ]
    assert offenders == []


def test_no_engine_code_names_a_platform():
    offenders = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in _engine_files()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if PLATFORM_NAMES.search(line)
    ]
    assert offenders == []


def test_format_modules_import_no_ray():
    code = (
        "import importlib, sys\n"
        f"for name in {FORMAT_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_a_platform_missing_a_part_it_declares_is_a_clear_error():
    import pytest

    from engine import plugins

    class Half(plugins.Platform):
        name = "half"
        input_keywords = {"half_ids": "a half id"}
        url_scheme = "half"

    with pytest.raises(plugins.PluginError, match="'half' declares the inputs half_ids"):
        Half().resolve_inputs({"half_ids": [1]})
    with pytest.raises(plugins.PluginError, match="no media fetcher for half:// URLs"):
        Half().fetcher()
