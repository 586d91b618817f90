"""Structure numbers of the package, from its source alone (``ast``; nothing is imported).

    python tools/code_metrics.py [--src src] [--json]

Reports: internal imports (module level / inside functions), import cycles (strongly connected
components of the module graph, every import counted), imports that go up the layer order of
:data:`LAYERS`, the longest functions, public functions with more than 8 parameters, lines of code.

:func:`violations` is the import contract that ``tests/test_import_contract.py`` (run by ``make lint``)
enforces.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "dreamrelation"

#: The layers, lowest first: a module may import its own layer and the layers below it, never above.
#: A module belongs to the first layer one of whose prefixes it matches (dotted prefix or exact name).
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("core", ("dreamrelation.core", "dreamrelation.errors", "dreamrelation")),
    # evaluation.report (tables, intervals) depends on utils.io alone and serves the toy checks as well
    ("utils", ("dreamrelation.utils", "dreamrelation.config", "dreamrelation.evaluation.report")),
    ("backbones", ("dreamrelation.backbones",)),
    ("adapters", ("dreamrelation.adapters",)),
    ("data", ("dreamrelation.data",)),
    ("inference", ("dreamrelation.inference",)),
    ("training", ("dreamrelation.training",)),
    ("toy", ("dreamrelation.toy",)),
    ("evaluation", ("dreamrelation.evaluation",)),
    ("apps", ("dreamrelation.apps", "dreamrelation.cli", "dreamrelation.ui", "dreamrelation.demo")),
)

#: Packages whose imports may sit inside functions: optional extras, or heavy imports kept off the CLI's
#: start-up path (the CLI imports each command's library code when the command runs).
OPTIONAL = ("gradio", "bitsandbytes", "wandb", "tensorboard", "torch.utils.tensorboard")


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the imported module (ours: resolved to a module that exists)
    line: int
    local: bool  # inside a function


def module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules(src: Path) -> dict[str, Path]:
    return {module_name(p, src): p for p in sorted((src / PACKAGE).rglob("*.py"))}


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def imports(src: Path) -> list[Import]:
    """Every import of one of our modules, by every module of the package."""
    known = modules(src)
    found: list[Import] = []
    for module, path in known.items():
        tree = ast.parse(path.read_text(), str(path))
        functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        local_lines = {line for f in functions for line in range(f.lineno, (f.end_lineno or f.lineno) + 1)}
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(node, module, path.name == "__init__.py")
                names = [f"{base}.{a.name}" for a in node.names] or [base]
            for name in names:
                target = _resolve(name, known) if name.split(".")[0] == PACKAGE else None
                if target and target != module:
                    found.append(Import(module, target, node.lineno, node.lineno in local_lines))
    return list(dict.fromkeys(found))  # one per (module, target, line): ``from x import a, b`` is one


def optional_local_imports(src: Path) -> tuple[int, int]:
    """``(all, optional)`` imports of other packages inside functions."""
    total = optional = 0
    for path in modules(src).values():
        tree = ast.parse(path.read_text())
        for f in ast.walk(tree):
            if not isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(f):
                if isinstance(node, (ast.Import, ast.ImportFrom)) and not getattr(node, "level", 0):
                    names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
                    for name in names:
                        if name and name.split(".")[0] != PACKAGE:
                            total += 1
                            optional += name.startswith(OPTIONAL)
    return total, optional


def layer_of(module: str) -> int:
    best = None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (
                best is None or len(prefix) > best[1]
            ):
                best = (index, len(prefix))
    if best is None:
        raise ValueError(f"{module}: in no layer of LAYERS")
    return best[0]


def upward(found: list[Import]) -> list[Import]:
    """Imports of a module in a higher layer."""
    return [i for i in found if layer_of(i.target) > layer_of(i.module)]


def cycles(found: list[Import]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for i in found:
        graph.setdefault(i.module, set()).add(i.target)
        graph.setdefault(i.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def violations(src: Path) -> list[str]:
    """The import contract: no cycles, no upward imports, our own modules imported at module level.

    The apps layer (CLI, UI, demo) may import library modules inside a command, so that ``--help`` and
    each command load only what they run. One line per (module, target), without line numbers.
    """
    found = imports(src)
    apps = len(LAYERS) - 1
    problems = [f"cycle: {' <-> '.join(c)}" for c in cycles(found)]
    problems += [
        f"upward: {i.module} ({LAYERS[layer_of(i.module)][0]}) -> {i.target} ({LAYERS[layer_of(i.target)][0]})"
        for i in upward(found)
    ]
    problems += [
        f"function-local: {i.module} -> {i.target}" for i in found if i.local and layer_of(i.module) != apps
    ]
    return sorted(set(problems))


@dataclass(frozen=True)
class Function:
    where: str
    name: str
    lines: int
    params: int


def functions(src: Path) -> list[Function]:
    out = []
    for module, path in modules(src).items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                params = [*a.posonlyargs, *a.args, *a.kwonlyargs]
                params = [p for p in params if p.arg not in ("self", "cls")]
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                out.append(
                    Function(f"{module}:{node.lineno}", node.name, node.end_lineno - first + 1, len(params))
                )
    return out


def lines_of_code(src: Path) -> tuple[int, int]:
    """``(all lines, non-blank non-comment lines)`` of the package."""
    total = code = 0
    for path in modules(src).values():
        for line in path.read_text().splitlines():
            total += 1
            code += bool(line.strip()) and not line.strip().startswith("#")
    return total, code


def report(src: Path) -> dict:
    found = imports(src)
    funcs = sorted(functions(src), key=lambda f: -f.lines)
    total, code = lines_of_code(src)
    local_total, local_optional = optional_local_imports(src)
    return {
        "modules": len(modules(src)),
        "internal_imports": len(found),
        "internal_imports_in_functions": sum(i.local for i in found),
        "other_imports_in_functions": local_total,
        "other_imports_in_functions_optional": local_optional,
        "import_cycles": cycles(found),
        "upward_imports": [f"{i.module}:{i.line} -> {i.target}" for i in upward(found)],
        "functions_over_80_lines": [f"{f.name} ({f.where}) {f.lines}" for f in funcs if f.lines > 80],
        "longest_functions": [f"{f.name} ({f.where}) {f.lines}" for f in funcs[:8]],
        "public_functions_over_8_params": [
            f"{f.name} ({f.where}) {f.params}" for f in funcs if f.params > 8 and not f.name.startswith("_")
        ],
        "lines": total,
        "lines_of_code": code,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", default=str(Path(__file__).resolve().parent.parent / "src"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    r = report(Path(args.src))
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    for key, value in r.items():
        if isinstance(value, list):
            print(f"{key}: {len(value)}")
            for item in value:
                print(f"    {item}")
        else:
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
