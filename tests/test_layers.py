"""The package's shape: four layers with imports pointing only down, no private names shared, small files,
and a repository that documents itself (nothing points outside it)."""
import ast
import os
import re

import pytest

from tests.helpers import ROOT

PACKAGE = os.path.join(ROOT, "diffvar")
# 1 maths (pure jnp; errors is a leaf every layer raises) -> 2 experiment -> 3 runtime -> 4 programs.
LAYERS = {
    1: {"sde", "likelihood", "objectives", "sampling", "mixture", "models", "data", "hyper", "errors"},
    2: {"config", "experiment"},
    3: {"distributed", "checkpoints", "estimate", "logs", "samples", "files", "plots", "results"},
    4: {"train", "evaluate", "sweep", "cli"},
}
LAYER_OF = {name: layer for layer, names in LAYERS.items() for name in names}


def modules():
    """{top-level diffvar module name: [its .py files]} for every module of the package."""
    out = {}
    for root, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(root, f), PACKAGE)
                top = rel.split(os.sep)[0].removesuffix(".py")
                if top != "__init__":
                    out.setdefault(top, []).append(os.path.join(root, f))
    return out


def diffvar_imports(path):
    """[(line, imported diffvar top-level module, names imported from it)] of one file."""
    tree = ast.parse(open(path).read())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "diffvar":
            parts = node.module.split(".")
            if len(parts) > 1:
                out.append((node.lineno, parts[1], [a.name for a in node.names]))
            else:  # from diffvar import x, y
                out.extend((node.lineno, a.name, []) for a in node.names)
        elif isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == "diffvar" and len(parts) > 1:
                    out.append((node.lineno, parts[1], []))
    return out


def test_every_module_has_a_layer():
    assert set(modules()) <= set(LAYER_OF), set(modules()) - set(LAYER_OF)


def test_imports_point_only_down():
    bad = []
    for name, paths in modules().items():
        for path in paths:
            for line, target, _ in diffvar_imports(path):
                if target in LAYER_OF and LAYER_OF[target] > LAYER_OF[name]:
                    bad.append(f"{os.path.relpath(path, ROOT)}:{line} (layer {LAYER_OF[name]}) imports {target} "
                               f"(layer {LAYER_OF[target]})")
    assert not bad, "\n".join(bad)


def test_the_import_check_catches_an_upward_import(tmp_path):
    path = tmp_path / "sde.py"
    path.write_text("from diffvar import train\nfrom diffvar.experiment import build\n")
    targets = [t for _, t, _ in diffvar_imports(str(path))]
    assert targets == ["train", "experiment"] and all(LAYER_OF[t] > LAYER_OF["sde"] for t in targets)


def test_no_private_name_is_used_across_modules():
    bad = []
    for name, paths in modules().items():
        for path in paths:
            source = open(path).read()
            for line, target, names in diffvar_imports(path):
                bad += [f"{os.path.relpath(path, ROOT)}:{line} imports {target}.{n}" for n in names
                        if n.startswith("_") and target != name]
            for m in re.finditer(r"\b(\w+)\._[a-z]\w*\(", source):
                if m.group(1) in LAYER_OF and m.group(1) != name:
                    bad.append(f"{os.path.relpath(path, ROOT)}: {m.group(0)}")
    assert not bad, "\n".join(bad)


def test_files_stay_small():
    sizes = {os.path.relpath(p, ROOT): sum(1 for _ in open(p)) for ps in modules().values() for p in ps}
    assert all(n < 400 for n in sizes.values()), {p: n for p, n in sizes.items() if n >= 400}


# Pointers out of the repository, spelt in pieces so that this file does not contain them itself.
OUTSIDE = tuple(a + b for a, b in (("DESIGN", ".md"), ("STYLE", ".md"), ("../", "shared"), ("/work/", "shared"),
                                   ("sys.path", ".insert")))


@pytest.mark.parametrize("folder", ["diffvar", "scripts", "configs", "tests", "docs", "benchmarks"])
def test_nothing_points_outside_the_repository(folder):
    bad = []
    for root, _, files in os.walk(os.path.join(ROOT, folder)):
        for f in files:
            if f.endswith((".py", ".md")):
                text = open(os.path.join(root, f)).read()
                bad += [f"{f}: {w}" for w in OUTSIDE if w in text]
    assert not bad, bad
