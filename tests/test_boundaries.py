"""The architecture's rules, read from the sources: what each package may import.

- ``trainlab.core`` and ``trainlab.tui`` never import torch (nor anything that does);
- ``trainlab.tui`` never imports the engine, the doctor or the command line;
- ``trainlab.core`` imports no other trainlab package;
- ``trainlab.engine`` and ``trainlab.doctor`` import no UI library and no front end;

The static checks read every import statement, those inside functions and under
``TYPE_CHECKING`` included, so an import that only runs on some path cannot hide; the
runtime checks confirm what really gets loaded.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "trainlab"
TORCH = ("torch", "torchvision", "torchaudio", "functorch")
UI = ("textual", "textual_plotext", "rich", "plotext")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imported(path: Path) -> set[str]:
    """Every module an import statement anywhere in ``path`` names. ``from pkg import
    mod`` names ``pkg.mod`` where that is a module of ours, else ``pkg``."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                raise AssertionError(f"{path}: relative import; use the full name")
            assert node.module is not None
            submodules = {f"{node.module}.{a.name}" for a in node.names} & MODULES.keys()
            if len(submodules) < len(node.names):
                names.add(node.module)
            names.update(submodules)
    return names


def within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def offenders(package: str, forbidden: tuple[str, ...]) -> list[str]:
    return sorted(f"{module} imports {name}"
                  for module, path in MODULES.items() if within(module, (package,))
                  for name in imported(path) if within(name, forbidden))


def test_the_static_check_sees_imports_inside_functions(tmp_path):
    source = tmp_path / "lazy.py"
    source.write_text("def later():\n    import torch.nn\n    from trainlab.cli import main\n")
    assert {"torch.nn", "trainlab.cli.main"} <= imported(source)


@pytest.mark.parametrize(("package", "forbidden"), [
    ("trainlab.core", (*TORCH, *UI, "trainlab.engine", "trainlab.doctor", "trainlab.cli",
                       "trainlab.tui")),
    ("trainlab.tui", (*TORCH, "trainlab.engine", "trainlab.doctor", "trainlab.cli")),
    ("trainlab.engine", (*UI, "trainlab.tui", "trainlab.cli")),
    ("trainlab.doctor", (*UI, "trainlab.tui", "trainlab.cli")),
])
def test_each_package_imports_only_what_it_may(package, forbidden):
    assert any(within(m, (package,)) for m in MODULES)  # the package is really there
    assert offenders(package, forbidden) == []


def test_the_detectors_are_torch_free():
    # The live doctor reads plain numbers from events: it can run wherever events go.
    assert offenders("trainlab.doctor.detectors", TORCH) == []


def _modules_after(code: str) -> set[str]:
    proc = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys\nprint('\\n'.join(sys.modules))"],
        capture_output=True, text=True, check=True, timeout=120,
    )
    return set(proc.stdout.split())


@pytest.mark.slow
def test_the_engine_loads_no_ui_library():
    loaded = _modules_after(
        "import trainlab.engine.loop, trainlab.engine.host, trainlab.engine.serve, "
        "trainlab.engine.checkpoint, trainlab.engine.resume, trainlab.engine.export, "
        "trainlab.doctor.checks, trainlab.doctor.lr_find")
    assert "torch" in loaded  # the check below means something
    assert not {name.split(".")[0] for name in loaded} & set(UI)


@pytest.mark.slow
def test_the_app_and_the_command_line_load_no_torch():
    loaded = _modules_after(
        "import trainlab.tui.app, trainlab.cli.main, trainlab.cli.commands, "
        "trainlab.tui.screens.compare, trainlab.core.serving")
    assert {"trainlab.tui.app", "textual", "plotext"} <= loaded  # the app really loaded
    assert "torch" not in loaded
    assert not any(within(name, ("trainlab.engine",)) for name in loaded)


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of ours it imports (type-checking imports included). An
    import of a package a module is inside is left out: Python runs that package's
    __init__ before the module anyway, and a package that imports its own modules (to
    register them) is not a circle between concepts."""
    graph = {}
    for module, path in MODULES.items():
        graph[module] = {name for name in imported(path) if name in MODULES
                         and name != module and not module.startswith(name + ".")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_sees_a_circle_through_a_type_checking_import():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_itself_through_others():
    # Type-checking imports count: a circle only types see still ties the concepts.
    graph = import_graph()
    assert "trainlab.engine.build" in graph["trainlab.engine.loop"]  # edges were read
    assert cycles(graph) == []
