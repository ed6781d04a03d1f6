"""The training loop stays readable on one screen: no function in main.py or training/ is longer
than 60 lines (from its ``def`` to its last line), as issue 21 asks."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MAX_LINES = 60


def function_lengths(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.name, node.lineno, node.end_lineno - node.lineno + 1


def test_no_function_of_the_training_loop_exceeds_a_screen():
    files = [REPO / "main.py", *sorted((REPO / "training").glob("*.py"))]
    assert len(files) > 1, "training/ is missing"
    long = [f"{path.relative_to(REPO)}:{line} {name} ({length} lines)"
            for path in files for name, line, length in function_lengths(path)
            if length > MAX_LINES]
    assert not long, f"functions over {MAX_LINES} lines: {long}"
