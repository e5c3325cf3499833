"""The package's shape, as docs/design.md describes it: imports point one way."""
from __future__ import annotations

import ast
import os
import re

import ngstore

PKG = os.path.dirname(ngstore.__file__)


def _modules() -> dict[str, str]:
    mods = {}
    for dp, _dn, fns in os.walk(PKG):
        for fn in fns:
            if fn.endswith(".py"):
                p = os.path.join(dp, fn)
                name = "ngstore." + os.path.relpath(p, PKG)[:-3].replace(os.sep, ".")
                mods[name.removesuffix(".__init__")] = p
    return mods


def _imports(name: str, path: str, mods: dict[str, str]) -> set[str]:
    """Every ngstore module ``name`` imports anywhere (functions and TYPE_CHECKING too),
    packages' ``__init__`` excluded (importing a submodule runs it anyway)."""
    pkg = name if path.endswith("__init__.py") else name.rsplit(".", 1)[0]
    with open(path) as f:
        tree = ast.parse(f.read())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            cands = [base] + [f"{base}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            cands = [a.name for a in node.names]
        else:
            continue
        out |= {c for c in cands if c in mods and c != name and not mods[c].endswith("__init__.py")}
    return out


def test_the_package_has_no_import_cycle():
    mods = _modules()
    graph = {n: _imports(n, p, mods) for n, p in mods.items()}
    state: dict[str, int] = {}  # 1 on the stack, 2 done

    def visit(n: str, stack: list[str]) -> None:
        state[n] = 1
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                cycle = [*stack[stack.index(m):], m]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if m not in state:
                visit(m, [*stack, m])
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])


def test_nothing_below_the_facade_imports_it():
    mods = _modules()
    above = {"ngstore", "ngstore.store", "ngstore.aio", "ngstore.cli", "ngstore.ops_cli", "ngstore.__main__"}
    for n, p in mods.items():
        if n not in above and not n.startswith("ngstore.obs"):
            assert "ngstore.store" not in _imports(n, p, mods), f"{n} imports the facade"


def test_modules_stay_small_and_the_facade_thin():
    for n, p in _modules().items():
        with open(p) as f:
            lines = sum(1 for _ in f)
        assert lines <= 1200, f"{n} has {lines} lines"
        if n == "ngstore.store":
            assert lines <= 600, f"the facade has {lines} lines"


#: File system calls only the file seam makes (``fileio.FileIO``).
_SYSCALLS = re.compile(r"\bos\.(open|fsync|fdatasync|rename|replace|unlink|remove|mkdir|makedirs|listdir|"
                       r"ftruncate|write|pwrite|pwritev|read|pread|scandir|stat|rmdir|walk|chmod|fchmod)\(|"
                       r"\bfcntl\.(flock|lockf)\(|\bshutil\.|\bos\.path\.(exists|isdir|isfile|getsize)\(|"
                       r"(?<![.\w])(?<!def )open\(")


def test_only_kv_imports_lmdb_and_only_fileio_touches_files():
    for n, p in _modules().items():
        with open(p) as f:
            text = f.read()
        if n != "ngstore.kv":
            assert "import lmdb" not in text, n
        if n == "ngstore.fileio":
            continue
        calls = [m.group(0) for m in _SYSCALLS.finditer(text)]
        if n == "ngstore.cli":  # the command's own stdout (os.devnull), not a store file
            calls = [c for c in calls if c != "os.open("]
        assert not calls, f"{n} calls {sorted(set(calls))} outside the file seam"
