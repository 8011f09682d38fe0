"""Code habits the project holds itself to (STYLE.md): functions short enough to read."""

import ast

from conftest import ROOT

MAX_LINES = 80
REASON = "Over 80 lines:"  # a function may be longer when its docstring says why


def test_no_function_over_80_lines_without_a_stated_reason():
    long = []
    for path in sorted((ROOT / "src" / "supportnet").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_LINES and REASON not in (ast.get_docstring(node) or ""):
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, "functions over 80 lines without a stated reason: " + ", ".join(long)


MAX_MODULE_LINES = 500
MODULE_REASON = "Over 500 lines:"  # a module may be longer when its docstring says why (issue 25)


def test_no_module_over_500_lines_without_a_stated_reason():
    long = []
    for path in sorted((ROOT / "src" / "supportnet").rglob("*.py")):
        text = path.read_text()
        n = len(text.splitlines())
        if n > MAX_MODULE_LINES and MODULE_REASON not in (ast.get_docstring(ast.parse(text)) or ""):
            long.append(f"{path.relative_to(ROOT)} ({n} lines)")
    assert not long, "modules over 500 lines without a stated reason in their docstring: " + ", ".join(long)
