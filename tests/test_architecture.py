"""The architecture docs/architecture.md describes: layers that point one way, no import cycles, deployment code
without the trainer, public registries, short functions, and a short route from the command line to DenseNet."""
import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "segdense"

# Low to high: a module may import from its own layer and the ones below, never from one above.
LAYERS = [
    ["errors", "version", "allocator"],
    ["registry", "tasks"],
    ["backbones", "metrics", "losses", "readers"],
    ["heads", "data"],
    ["models"],
    ["runtime"],
    ["engine", "inference"],
    ["reports", "export", "importers"],
    ["evaluation"],
    ["config"],
    [""],  # segdense/__init__.py, the package's front door
]
LAYER = {part: i for i, parts in enumerate(LAYERS) for part in parts}
MAX_FUNCTION_LINES = 50


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_exists(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports(path: Path):
    """(imported segdense module, imported names, line) for every import in ``path``, at any depth (inside
    functions and ``if TYPE_CHECKING:`` too)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [a.name for a in node.names]
            submodules = [f"{target}.{n}" for n in names if module_exists(f"{target}.{n}")]
            yield from ((s, [], node.lineno) for s in submodules)
            if len(submodules) < len(names):
                yield target, [n for n in names if f"{target}.{n}" not in submodules], node.lineno


def graph() -> dict[str, set[str]]:
    edges = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        edges[module_name(path)] = {t for t, _, _ in imports(path) if t.split(".")[0] == "segdense"}
    return edges


def layer_of(module: str) -> int:
    part = module.split(".")[1] if "." in module else ""
    return LAYER[part]


def test_every_part_of_the_package_has_a_layer():
    parts = {module_name(p).split(".")[1] for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE or p.name != "__init__.py"}
    assert parts <= set(LAYER), f"give these a layer in LAYERS (and docs/architecture.md): {parts - set(LAYER)}"


def test_no_import_points_to_a_higher_layer():
    upward = [f"{a} -> {b}" for a, targets in graph().items() for b in targets if layer_of(b) > layer_of(a)]
    assert not upward


def test_there_is_no_import_cycle():
    edges, state, cycles = graph(), {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert not cycles


def test_deployment_code_does_not_import_the_trainer():
    inference = {m: t for m, t in graph().items() if m.startswith("segdense.inference")}
    assert inference and not {m: t for m, t in inference.items() if any(x.startswith("segdense.engine") for x in t)}


def python_files():
    return [p for folder in ("segdense", "tools", "benchmarks") for p in sorted((ROOT / folder).rglob("*.py"))]


def test_no_private_name_is_imported_from_another_module():
    private = [f"{p.relative_to(ROOT)}:{line} {target}.{n}" for p in python_files() for target, names, line in imports(p)
               for n in names if target.startswith(("segdense", "benchmarks")) and n.startswith("_")
               and not n.startswith("__")]
    assert not private


def test_tools_do_not_edit_sys_path():
    assert not [p.name for p in (ROOT / "tools").glob("*.py") if "sys.path" in p.read_text()]


def test_no_function_is_longer_than_fifty_lines():
    long = []
    for path in python_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                if node.end_lineno - first + 1 > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} {node.end_lineno - first + 1}")
    assert not long


# Run tools/train.py as a user does; DenseNet.__init__ records which project files are on the stack, then stops.
ROUTE_PROBE = """
import inspect, json, os, runpy, sys
from segdense.backbones.densenet import DenseNet

ROOT = sys.argv[1]


def probe(self, *args, **kwargs):
    files = []
    for frame in reversed(inspect.stack()):
        if frame.filename.startswith(ROOT) and frame.filename not in files:
            files.append(frame.filename)
    print(json.dumps({"files": files, "output_stride": kwargs.get("output_stride")}), flush=True)
    os._exit(0)

DenseNet.__init__ = probe
sys.argv = [os.path.join(ROOT, "tools", "train.py")] + sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_the_train_command_reaches_the_densenet_constructor_through_at_most_five_project_files(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", ROUTE_PROBE, str(ROOT) + "/", "backbone=densenet121", "output_stride=16",
         "validate_data=off", "dataset.num_samples=2", f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    route = json.loads(done.stdout.strip().splitlines()[-1])
    files = [str(Path(f).relative_to(ROOT)) for f in route["files"]]
    assert route["output_stride"] == 16  # the command line's value reached the constructor
    assert files[0] == "tools/train.py" and files[-1] == "segdense/backbones/densenet.py"
    assert len(files) <= 5, files


@pytest.mark.parametrize("doc", ["docs/architecture.md"])
def test_the_architecture_page_names_every_layer(doc):
    text = (ROOT / doc).read_text()
    assert all(f"`{part}`" in text for parts in LAYERS for part in parts if part)
