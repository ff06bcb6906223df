"""The code stays readable: short functions with few parameters, flags read only at the top.

* No function body longer than 60 lines of code (docstrings, comments and blank lines not
  counted) and none with more than 8 parameters (``self``/``cls``/``ctx`` not counted), in the
  project's own Python files: entry points, ``Utils/``, ``bench/`` and ``tests/``.
* Nothing below the entry points (``Main.py``, ``pretrainTeacher.py``, ``modelTools.py``,
  ``prepareData.py``) and the flag layer (``Params.py``, the parser; ``Utils/config/Validate.py``
  and ``Utils/config/Build.py``, which check the flags and build the frozen configs of
  ``Utils/config/Config.py``) reads the parsed flags: no ``args.`` elsewhere in ``Utils/``, nor in
  ``DataHandler.py`` or ``Model.py``.
"""
import ast
import re
import subprocess
import sys

from conftest import ROOT

MAX_LINES, MAX_PARAMS = 60, 8
SKIPPED = {"self", "cls", "ctx"}


def _python_files():
    folders = [ROOT, ROOT / "bench"]
    return sorted([path for folder in folders for path in folder.glob("*.py")]
                  + list((ROOT / "Utils").rglob("*.py")) + list((ROOT / "tests").rglob("*.py")))


def _code_lines(lines, node):
    body = node.body
    first = body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        if len(body) == 1:
            return 0
        first = body[1]
    text = lines[first.lineno - 1:node.end_lineno]
    return sum(1 for line in text if line.strip() and not line.strip().startswith("#"))


def _shape_faults(path, root=ROOT):
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        a = node.args
        params = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs if x.arg not in SKIPPED]
        params += ["*"] * bool(a.vararg) + ["**"] * bool(a.kwarg)
        n_lines = _code_lines(lines, node)
        if n_lines > MAX_LINES or len(params) > MAX_PARAMS:
            yield f"{path.relative_to(root)}:{node.lineno} {node.name}: {n_lines} lines, {len(params)} parameters"


def test_no_function_is_longer_than_60_lines_or_takes_more_than_8_parameters():
    files = _python_files()
    assert len(files) > 40
    faults = [fault for path in files for fault in _shape_faults(path)]
    assert not faults, "\n".join(faults)


def test_the_shape_check_sees_a_long_function(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(61))
    path = tmp_path / "long.py"
    path.write_text(f"def f(a, b, c, d, e, f, g, h, i):\n    \"\"\"doc\"\"\"\n{body}\n")
    assert list(_shape_faults(path, tmp_path)) == ["long.py:1 f: 61 lines, 9 parameters"]


def test_no_module_below_the_entry_points_reads_the_parsed_flags():
    flag_layer = {ROOT / "Utils" / "config" / "Validate.py", ROOT / "Utils" / "config" / "Build.py"}
    below = [ROOT / "DataHandler.py", ROOT / "Model.py",
             *sorted(p for p in (ROOT / "Utils").rglob("*.py") if p not in flag_layer)]
    found = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}" for path in below
             for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             if re.search(r"\bargs\.|vars\(args\)", line)]
    assert not found, "\n".join(found)


# Where a flag may still be read by its command-line name below the entry points: the flag layer
# (parsing, validation, building the configs), the one fallback for checkpoints written before
# they stored their config, and nothing else (a resume compares the recorded configs).
FLAG_READERS = {"Utils/config/Build.py", "Utils/config/Validate.py", "Utils/config/Config.py"}


def test_no_module_below_the_entry_points_reads_a_recorded_flag_by_name():
    """After training, settings come from the recorded config (Utils/config/Config.py
    ``recorded_*``), never from ``flags["name"]`` / ``flags.get("name")``."""
    pattern = re.compile(r"""flags(\.get\(|\[)\s*["']""")
    below = [ROOT / "DataHandler.py", ROOT / "Model.py", ROOT / "lightgnn.py", *sorted((ROOT / "Utils").rglob("*.py"))]
    found = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}" for path in below
             if str(path.relative_to(ROOT)) not in FLAG_READERS
             for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(line)]
    assert not found, "\n".join(found)


def test_the_flag_read_check_sees_one(tmp_path):
    assert re.search(r"""flags(\.get\(|\[)\s*["']""", 'x = loaded.flags.get("topk", 20)')
    assert not re.search(r"""flags(\.get\(|\[)\s*["']""", "x = {k: flags[k] for k in names}")


def _hidden_imports(path, root=ROOT):
    """Imports inside function bodies, outside a try block, without a comment saying why."""
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    tree = ast.parse(source)
    in_try = {id(n) for t in ast.walk(tree) if isinstance(t, ast.Try) for n in ast.walk(t)}
    for func in ast.walk(tree):
        if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(func):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in in_try \
                    and "#" not in lines[node.lineno - 1]:
                yield f"{path.relative_to(root)}:{node.lineno}: {lines[node.lineno - 1].strip()}"


def test_no_import_hides_in_a_function_body_without_saying_why():
    """Imports sit at the top of a module; one inside a function is optional (inside a try, or a
    comment says so) or breaks a cycle (a comment says which)."""
    code = [*sorted(ROOT.glob("*.py")), *sorted((ROOT / "Utils").rglob("*.py"))]
    found = [fault for path in code for fault in _hidden_imports(path)]
    assert not found, "\n".join(found)


def test_the_hidden_import_check_sees_one(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("def f():\n    import os\n    import sys  # (optional)\n    try:\n        import numba\n"
                    "    except ImportError:\n        pass\n")
    assert list(_hidden_imports(path, tmp_path)) == ["m.py:2: import os"]


def test_the_model_tools_do_not_import_the_training_loop():
    """modelTools.py, the Python API, plots and compare read files and rank; none of them loads the
    epoch loop or a stage (only the metrics, which the loop shares)."""
    code = ("import sys; import modelTools, lightgnn; from Utils.tools import Compare, Plots, Report, Serve; "
            "print(sorted(m for m in sys.modules if m.startswith('Utils.training')))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["['Utils.training',", "'Utils.training.Metrics']"]
