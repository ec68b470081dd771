"""The engine under nodes/engine/ must never import ComfyUI.

It is the part other front ends (the A1111 routes, scripts, benchmarks) reuse,
and the part the unit tests exercise without a ComfyUI tree; an import of
comfy, folder_paths, server, nodes, ... would tie it to one process layout.
"""
import ast
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[2] / "nodes" / "engine"
COMFY_MODULES = {
    "comfy",
    "comfy_api",
    "comfy_extras",
    "comfy_execution",
    "folder_paths",
    "server",
    "nodes",
    "execution",
    "latent_preview",
    "node_helpers",
    "app",
}


def _imported_roots(tree: ast.AST, depth: int = 0) -> set[str]:
    """Top-level modules imported; ".." for a relative import reaching above the engine.

    depth: how many folders below nodes/engine/ the module sits (families/ is 1),
    so that `from ..components import X` in a subpackage stays inside.
    """
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.level - 1 > depth:
            roots.add("..")  # reaching above the engine package
    return roots


def test_engine_modules_exist():
    assert len(list(ENGINE.rglob("*.py"))) >= 5


def test_engine_imports_nothing_from_comfyui():
    offenders = {}
    for path in ENGINE.rglob("*.py"):
        depth = len(path.relative_to(ENGINE).parts) - 1
        roots = _imported_roots(ast.parse(path.read_text(), filename=str(path)), depth)
        bad = roots & (COMFY_MODULES | {".."})
        if bad:
            offenders[str(path.relative_to(ENGINE))] = sorted(bad)
    assert offenders == {}


def test_the_check_catches_a_comfy_import():
    tree = ast.parse("import folder_paths\nfrom comfy.utils import ProgressBar\nfrom ..types import X\n")
    assert {"folder_paths", "comfy", ".."} <= _imported_roots(tree)
    inside = ast.parse("from ..components import X\n")
    assert ".." not in _imported_roots(inside, depth=1)
    assert ".." in _imported_roots(ast.parse("from ...types import X\n"), depth=1)


def test_importing_the_engine_does_not_load_comfyui():
    import subprocess
    import sys

    code = (
        "import sys, importlib.util;"
        f"spec = importlib.util.spec_from_file_location('diffusers_studio', r'{ENGINE.parents[1] / '__init__.py'}',"
        f" submodule_search_locations=[r'{ENGINE.parents[1]}']);"
        "m = importlib.util.module_from_spec(spec); sys.modules['diffusers_studio'] = m; spec.loader.exec_module(m);"
        "import pkgutil, importlib;"
        "[importlib.import_module('diffusers_studio.nodes.engine.' + i.name) for i in pkgutil.iter_modules("
        f"[r'{ENGINE}'])];"
        "bad = [n for n in sys.modules if n.split('.')[0] in ('comfy', 'folder_paths', 'comfy_api', 'server')];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
