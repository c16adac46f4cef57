"""Source rules that keep loading a file from running code: torch.load only with weights_only=True, YAML only
through safe_load, and no eval/exec anywhere except the HumanEval sandbox's child (which exists to run code)."""
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("model", "trainer", "data", "eval", "kernels", "bench", "train.py")
SANDBOX_CHILD = REPO / "eval" / "sandbox_guard.py"


def sources():
    for entry in PACKAGES:
        path = REPO / entry
        yield from ([path] if path.is_file() else sorted(path.rglob("*.py")))


def calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute):  # module.function(...) or some_object.method(...)
                yield node, getattr(func.value, "id", "<object>"), func.attr
            elif isinstance(func, ast.Name):  # a plain name: builtins such as eval
                yield node, None, func.id


def test_loading_never_executes_code():
    problems = []
    for path in sources():
        tree = ast.parse(path.read_text(), str(path))
        for node, owner, name in calls(tree):
            where = f"{path.relative_to(REPO)}:{node.lineno}"
            if owner == "torch" and name == "load":
                safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                           for k in node.keywords)
                if not safe:
                    problems.append(f"{where}: torch.load without weights_only=True")
            if owner == "yaml" and name in ("load", "unsafe_load", "full_load"):
                problems.append(f"{where}: yaml.{name} (use yaml.safe_load)")
            if owner is None and name in ("eval", "exec") and path != SANDBOX_CHILD:
                problems.append(f"{where}: {name}()")
            if owner == "pickle" and name in ("load", "loads"):
                problems.append(f"{where}: pickle.{name}")
    assert not problems, "\n".join(problems)
