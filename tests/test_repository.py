"""The package's shape: no private names shared across modules, functions a reader takes in without scrolling,
and a repository that documents itself (every relative link resolves inside it). The layering itself is
import-linter's `layers` contract in pyproject.toml (`lint-imports`, run by `make test`)."""

import ast
import os
import re

import pytest

from tests.helpers import ROOT

PACKAGE = os.path.join(ROOT, "diffvar")
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 400
LISTINGS = set()  # functions exempt from MAX_FUNCTION_LINES: none


def python_files(folder):
    return [os.path.join(r, f) for r, _, fs in os.walk(folder) for f in fs if f.endswith(".py")]


def module_name(path):
    """The diffvar module a file belongs to, e.g. 'sde', 'models', 'sweep'."""
    return os.path.relpath(path, PACKAGE).split(os.sep)[0].removesuffix(".py")


def test_no_private_name_is_used_across_modules():
    bad = []
    for path in python_files(PACKAGE):
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("diffvar."):
                target = node.module.split(".")[1]
                bad += [
                    f"{path}:{node.lineno} imports {node.module}.{a.name}"
                    for a in node.names
                    if a.name.startswith("_") and target != module_name(path)
                ]
        for m in re.finditer(r"\b(\w+)\._[a-z]\w*\(", open(path).read()):
            if os.path.exists(os.path.join(PACKAGE, m.group(1) + ".py")) and m.group(1) != module_name(path):
                bad.append(f"{path}: {m.group(0)}")
    assert not bad, "\n".join(bad)


def test_modules_stay_under_400_lines():
    """A module a reader can hold: none in diffvar/ over MAX_MODULE_LINES (split by job, not by size)."""
    sizes = {os.path.relpath(p, ROOT): len(open(p).read().splitlines()) for p in python_files(PACKAGE)}
    assert not {p: n for p, n in sizes.items() if n > MAX_MODULE_LINES}


def test_functions_fit_on_a_screen():
    long = []
    for path in python_files(PACKAGE):
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name not in LISTINGS:
                n = node.end_lineno - node.lineno + 1
                long += [f"{os.path.relpath(path, ROOT)}:{node.lineno} {node.name} ({n} lines)"] * (
                    n > MAX_FUNCTION_LINES
                )
    assert not long, long


LINK = re.compile(r"\]\(([^)#\s]+)")


@pytest.mark.parametrize("folder", ["", "docs"])
def test_every_relative_link_in_the_docs_resolves_inside_the_repository(folder):
    bad = []
    for f in os.listdir(os.path.join(ROOT, folder)):
        if f.endswith(".md"):
            for target in LINK.findall(open(os.path.join(ROOT, folder, f)).read()):
                if "://" in target:
                    continue
                path = os.path.realpath(os.path.join(ROOT, folder, target))
                if not path.startswith(ROOT + os.sep) or not os.path.exists(path):
                    bad.append(f"{folder or '.'}/{f}: {target}")
    assert not bad, bad


@pytest.mark.parametrize("folder", ["diffvar", "scripts", "configs", "tests", "docs", "benchmarks", "."])
def test_every_path_that_climbs_with_dotdot_stays_inside_the_repository(folder):
    """A path that climbs with dot-dot names a file relative to its own folder: it must exist in the repository."""
    bad = []
    for root, dirs, files in os.walk(os.path.join(ROOT, folder)):
        dirs[:] = [] if folder == "." else [d for d in dirs if not d.startswith(".")]
        for f in files:
            if f.endswith((".py", ".md", "Makefile")):
                for token in re.findall(r"(?<![\w.])(?:\.\./)+[\w.\-/]*", open(os.path.join(root, f)).read()):
                    path = os.path.realpath(os.path.join(root, token))
                    if not path.startswith(ROOT + os.sep) or not os.path.exists(path):
                        bad.append(f"{os.path.relpath(os.path.join(root, f), ROOT)}: {token}")
    assert not bad, bad


@pytest.mark.parametrize("folder", ["diffvar", "scripts", "configs", "tests", "docs", "benchmarks", "."])
def test_every_markdown_file_named_exists_in_the_repository(folder):
    """A page named by a path ('docs/likelihood.md') or an upper-case name (README.md) in a docstring or a doc
    is one of ours (lower-case bare names such as results.md are files a program writes)."""
    bad = []
    for root, dirs, files in os.walk(os.path.join(ROOT, folder)):
        dirs[:] = [] if folder == "." else [d for d in dirs if not d.startswith(".")]
        for f in files:
            if f.endswith((".py", ".md")):
                for name in re.findall(r"(?<![\w/.:#-])([\w./-]+\.md)\b", open(os.path.join(root, f)).read()):
                    stem = os.path.basename(name)[:-3]
                    if not stem or ("/" not in name and not stem.isupper()):
                        continue
                    if not any(os.path.exists(os.path.join(base, name)) for base in (root, ROOT)):
                        bad.append(f"{os.path.relpath(os.path.join(root, f), ROOT)}: {name}")
    assert not bad, bad
