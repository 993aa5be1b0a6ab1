"""The layout rules of docs/ARCHITECTURE.md, checked on the source: imports run one way (each
module imports only from lower layers), no imports inside function bodies except the optional
or deliberately deferred ones listed here, and no library function longer than ~80 lines."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "deeplense_ssl"

# Lowest first; a module may import from strictly lower layers (and, inside a subpackage, from
# its own subpackage). The same table is drawn in docs/ARCHITECTURE.md.
LAYERS = [
    ["errors", "metrics", "collapse", "optim"],
    ["io", "runtime", "attribution", "backbones", "heads", "losses", "distributed", "transforms"],
    ["cleaning", "runs", "datacards", "pretext"],
    ["datasets", "checkpoint", "plots", "tracking"],
    ["methods", "streaming", "search"],
    ["config"],
    ["inference", "simulate"],
    ["training", "embedding", "scoring"],
    ["finetuning", "evaluation", "export"],
    ["report"],
    ["demo"],
]
# imported inside functions on purpose: optional extras, or too slow for every command
DEFERRED_IMPORTS = {
    "lenstronomy": "the `sim` extra",
    "umap": "the `umap` extra; importing it compiles numba code (seconds)",
    "faiss": "the `search` extra (search.FaissSearch)",
    "captum": "~0.5 s and pyplot at import; config imports attribution on every command",
    "onnx": "the export extra (export.onnx_model_bytes)",
    "onnxruntime": "the export extra (export._check_onnx)",
    "onnxscript": "the export extra (the torch ONNX exporter needs it)",
    "mlflow": "the `track` extra (tracking.MLflowTracker; ~1 s at import)",
}
MAX_FUNCTION_LINES = 80  # body lines, docstring excluded


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        if parts:
            out[".".join(parts)] = path
    return out


def _layer(module: str) -> int:
    top = module.split(".")[0]
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"deeplense_ssl.{module} is in no layer of LAYERS")


def _package_imports(module: str, path: Path) -> set[str]:
    """Modules of this package that ``module`` imports (relative or absolute)."""
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = base[: len(base) - (node.level - 1)] + (
                    [node.module] if node.module else []
                )
                target = ".".join(parts)
            elif (node.module or "").startswith("deeplense_ssl."):
                target = node.module.removeprefix("deeplense_ssl.")
            else:
                continue
            names = [f"{target}.{a.name}" if target else a.name for a in node.names]
            found.update(n for n in [target, *names] if n and n in _modules())
    return found


def test_every_module_imports_only_from_lower_layers():
    bad = []
    for module, path in _modules().items():
        for dep in _package_imports(module, path) - {module}:
            same_package = dep.split(".")[0] == module.split(".")[0]
            if not same_package and _layer(dep) >= _layer(module):
                bad.append(f"{module} (layer {_layer(module)}) imports {dep} ({_layer(dep)})")
    assert not bad, "\n".join(sorted(bad))


def test_no_imports_inside_functions_except_deferred_extras():
    bad = []
    for module, path in _modules().items():
        for fn in ast.walk(ast.parse(path.read_text())):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.Import):
                    roots = [a.name.split(".")[0] for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    roots = [(node.module or "").split(".")[0]] if not node.level else ["."]
                else:
                    continue
                bad += [f"{module}.{fn.name}: {r}" for r in roots if r not in DEFERRED_IMPORTS]
    assert not bad, "\n".join(sorted(set(bad)))


def test_library_functions_are_short():
    long = []
    for module, path in _modules().items():
        for fn in ast.walk(ast.parse(path.read_text())):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = fn.body
                has_doc = isinstance(body[0], ast.Expr) and isinstance(
                    getattr(body[0], "value", None), ast.Constant
                )
                first = body[1] if has_doc and len(body) > 1 else body[0]
                lines = fn.end_lineno - first.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{module}.{fn.name}: {lines} lines")
    assert not long, "\n".join(long)


def test_the_layer_table_names_every_module_once():
    names = [n for layer in LAYERS for n in layer]
    assert len(names) == len(set(names))
    tops = {m.split(".")[0] for m in _modules()}
    assert tops == set(names)
