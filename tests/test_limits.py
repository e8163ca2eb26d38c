"""The project's house rules that code can check (developers' guide): no function over 80 lines and no module over
400 lines in resnet/, bench/ and compliance/, measured with ast (a function runs from its `def` line to its last
line; nested functions and methods count on their own and inside the function that holds them; a module is its
number of lines); and one console warning line, `resnet.errors.warn`, for the whole package."""
import ast
import subprocess
import sys

import pytest

from tests.conftest import REPO

PACKAGES = ("resnet", "bench", "compliance")
MAX_FUNCTION_LINES, MAX_MODULE_LINES = 80, 400
MODULES = sorted(p for package in PACKAGES for p in (REPO / package).rglob("*.py"))


def function_lengths(source: str) -> dict[str, int]:
    """{qualified name: lines} of every function and method in `source`."""
    lengths = {}

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            name = prefix
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}."
                if not isinstance(child, ast.ClassDef):
                    lengths[name[:-1]] = child.end_lineno - child.lineno + 1
            visit(child, name)

    visit(ast.parse(source), "")
    return lengths


def test_the_measure_counts_def_to_last_line_for_nested_functions_and_methods():
    source = "def f():\n    def g():\n        return 1\n\n    return g\n\n\nclass C:\n    async def m(self):\n" \
             "        pass\n"
    assert function_lengths(source) == {"f": 5, "f.g": 2, "C.m": 2}


@pytest.mark.parametrize("path", MODULES, ids=[str(p.relative_to(REPO)) for p in MODULES])
def test_no_function_over_80_lines_and_no_module_over_400(path):
    source = path.read_text()
    lines = len(source.splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path.relative_to(REPO)}: {lines} lines; split it (limit {MAX_MODULE_LINES})"
    long = {name: n for name, n in function_lengths(source).items() if n > MAX_FUNCTION_LINES}
    assert not long, f"{path.relative_to(REPO)}: functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_the_package_warns_only_through_errors_warn():
    """The prefix is written once: no other module of resnet/ spells `: warning:`."""
    spelled = [str(p.relative_to(REPO)) for p in sorted((REPO / "resnet").rglob("*.py"))
               if ": warning:" in p.read_text() and p.name != "errors.py"]
    assert spelled == []


def test_a_warning_is_one_line_and_a_console_that_went_away_ends_nothing():
    code = ("import os, sys\n"
            "from resnet import errors\n"
            "errors.warn('disk almost full; free some space')\n"
            "os.close(2)\n"                       # the console's pipe is gone
            "errors.warn('nobody reads this')\n"
            "print('still running')\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout == "still running\n", out.stderr
    assert out.stderr == "mlperf-resnet: warning: disk almost full; free some space\n"
