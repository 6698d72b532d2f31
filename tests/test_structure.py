"""The library's shape, read from its source: what imports what, how long modules are, what tests use.

The rules (DEVELOPERS.md, "Architecture"): ``dldc`` never imports kfp or the checkout's
``components``/``pipelines``; its subpackages import each other without cycles; no module carries
more than ~600 lines of code (the configuration schema excepted); tests use ``dldc`` through public
names only.
"""

from __future__ import annotations

import ast
import io
import tokenize
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "dldc"
MAX_CODE_LINES = 600
LONG_ALLOWED = {"dldc/config.py"}
ORCHESTRATOR = ("kfp", "components", "pipelines")  # the configuration schema: one pydantic model per stage


def _modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _imports(path: Path, module: str) -> set[str]:
    """Every module ``path`` imports, at any depth (lazy imports in functions count), absolute names."""
    names = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _subpackage(module: str) -> str:
    """``dldc.iel.engine`` → ``dldc.iel``; top-level modules (``dldc.io``) are their own unit."""
    return ".".join(module.split(".")[:2])


def _code_lines(path: Path) -> int:
    """Lines holding code: not blank, not only a comment, not part of a docstring."""
    source = path.read_text(encoding="utf-8")
    docstrings = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(getattr(first.value, "value", None), str):
                docstrings.update(range(first.lineno, first.end_lineno + 1))
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
    lines = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in skip:
            lines.update(n for n in range(token.start[0], token.end[0] + 1) if n not in docstrings)
    return len(lines)


def test_dldc_never_imports_the_orchestrator():
    offending = {
        module: sorted(name for name in _imports(path, module) if name.split(".")[0] in ORCHESTRATOR)
        for module, path in _modules().items()
    }
    assert {m: names for m, names in offending.items() if names} == {}


def test_dldc_subpackages_import_each_other_without_cycles():
    modules = _modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for module, path in modules.items():
        for name in _imports(path, module):
            if name.startswith("dldc."):
                target = next((m for m in (name, name.rpartition(".")[0]) if m in modules), None)
                if target and _subpackage(target) != _subpackage(module):
                    graph[_subpackage(module)].add(_subpackage(target))
    assert graph["dldc.config"] == set(), "config.py imports nothing above it"

    # Depth-first search for a cycle, reporting one when found.
    state: dict[str, str] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join([*path[path.index(nxt):], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_the_import_rules_catch_what_they_are_for(tmp_path):
    """The helpers above see lazy, relative and from-imports (a rule that sees nothing passes vacuously)."""
    source = "from . import engine\nfrom ..export import runtime\n\ndef f():\n    import kfp.dsl\n"
    path = tmp_path / "mod.py"
    path.write_text(source)
    names = _imports(path, "dldc.iel.mod")
    assert {"dldc.iel.engine", "dldc.export.runtime", "kfp.dsl"} <= names
    path.write_text('"""Doc\n\nstring."""\n\n# comment\nx = 1\n\n\ndef f():\n    """Doc."""\n'
                    "    return (1,\n            2)\n")
    assert _code_lines(path) == 4


def test_modules_stay_short():
    long = {
        path.relative_to(REPO).as_posix(): lines
        for path in _modules().values()
        if (lines := _code_lines(path)) > MAX_CODE_LINES and path.relative_to(REPO).as_posix() not in LONG_ALLOWED
    }
    assert long == {}, "split these along their seams"


def _private_uses(source: str) -> list[str]:
    """``from dldc.x import _name`` and ``module._name`` where ``module`` is a dldc module the file imported."""
    found, modules = [], set()
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update((a.asname or a.name).split(".")[0] for a in node.names if a.name.startswith("dldc"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dldc"):
            found += [f"{node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
            folder = REPO.joinpath(*node.module.split("."))
            modules.update(a.asname or a.name for a in node.names
                           if (folder / f"{a.name}.py").is_file() or (folder / a.name).is_dir())  # fmt: skip
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in modules:
                found.append(f"{ast.unparse(node.value)}.{node.attr}")
    return found


def test_private_name_check_sees_both_forms():
    source = "import dldc.cli\nfrom dldc.iel import engine\nfrom dldc.io import _umask\nengine._x(dldc.cli._y)\n"
    assert sorted(_private_uses(source)) == ["dldc.cli._y", "dldc.io._umask", "engine._x"]


def test_tests_use_public_names_of_dldc():
    private = {
        path.name: uses
        for path in sorted((REPO / "tests").glob("*.py"))
        if (uses := _private_uses(path.read_text(encoding="utf-8")))
    }
    assert private == {}
