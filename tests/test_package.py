"""The package itself: the lazy top-level API and the one-way import rules."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import deeplense_ssl

PACKAGE = Path(deeplense_ssl.__file__).parent


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_import_is_light():
    """``import deeplense_ssl`` imports none of its submodules, and neither torch nor numpy."""
    loaded = json.loads(
        _run("import json, sys, deeplense_ssl; print(json.dumps(sorted(sys.modules)))")
    )
    ours = [m for m in loaded if m.startswith("deeplense_ssl.")]
    assert ours == []
    assert "torch" not in loaded and "numpy" not in loaded


def test_every_public_name_resolves_lazily():
    names = [n for n in deeplense_ssl.__all__ if n != "__version__"]
    assert sorted(names) == sorted(deeplense_ssl._LAZY)  # one list, no stale entries
    code = (
        "import sys, deeplense_ssl as d\n"
        "assert 'deeplense_ssl.report' not in sys.modules\n"
        "obj = d.build_report\n"
        "assert 'deeplense_ssl.report' in sys.modules\n"
        "for name in d.__all__:\n"
        "    value = getattr(d, name)\n"
        "    mod = getattr(value, '__module__', 'deeplense_ssl')\n"
        "    assert mod.startswith('deeplense_ssl'), (name, mod)\n"
        "print('ok')\n"
    )
    assert _run(code).strip() == "ok"
    for name in names:
        value = getattr(deeplense_ssl, name)
        assert value is getattr(sys.modules[f"deeplense_ssl.{deeplense_ssl._LAZY[name]}"], name)
    assert set(names) <= set(dir(deeplense_ssl))


def test_api_functions_are_the_modules_functions():
    """``deeplense_ssl.finetune`` / ``.evaluate`` are the functions of ``finetuning`` /
    ``evaluation``, also after those modules were imported."""
    code = (
        "import deeplense_ssl as d\n"
        "from deeplense_ssl.evaluation import evaluate\n"
        "from deeplense_ssl.finetuning import finetune\n"
        "assert d.evaluate is evaluate and d.finetune is finetune\n"
        "from deeplense_ssl import finetune as f\n"
        "assert callable(f) and f is finetune\n"
        "print('ok')\n"
    )
    assert _run(code).strip() == "ok"


def test_unknown_attribute_is_an_attribute_error():
    try:
        deeplense_ssl.no_such_name  # noqa: B018
    except AttributeError as exc:
        assert "no_such_name" in str(exc)
    else:
        raise AssertionError("expected AttributeError")


# ----------------------------------------------------------------------------- import direction


def _package_imports(path: Path) -> set[str]:
    """Modules of this package that ``path`` imports (``config``, ``methods.base``, ...)."""
    found: set[str] = set()
    tree = ast.parse(path.read_text())
    parent = path.parent.relative_to(PACKAGE).parts
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = list(parent[: len(parent) - node.level + 1])
            if node.module:
                base.append(node.module)
            prefix = ".".join(base)
            found.add(prefix)
            found.update(f"{prefix}.{a.name}".strip(".") for a in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("deeplense_ssl"):
            found.add(node.module.removeprefix("deeplense_ssl").strip("."))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("deeplense_ssl."):
                    found.add(alias.name.removeprefix("deeplense_ssl."))
    return {m for m in found if m}


def _files_of(module: str) -> list[Path]:
    path = PACKAGE.joinpath(*module.split("."))
    if path.is_dir():
        return sorted(path.rglob("*.py"))
    return [path.with_suffix(".py")] if path.with_suffix(".py").exists() else []


def test_modules_config_imports_never_import_config():
    """Choice lists live in the implementing modules; config imports them, never the reverse
    (implementing modules -> config -> training), so there is no import cycle."""
    imported = {m.split(".")[0] for m in _package_imports(PACKAGE / "config.py")} - {"errors"}
    assert {"backbones", "heads", "runtime", "transforms", "methods", "optim"} <= imported
    seen: set[str] = set()
    todo = sorted(imported)
    while todo:  # everything config imports, directly or not
        module = todo.pop()
        if module in seen or module == "config":
            continue
        seen.add(module)
        for file in _files_of(module):
            deps = {m.split(".")[0] for m in _package_imports(file)}
            assert "config" not in deps, f"{file.relative_to(PACKAGE)} imports config"
            todo.extend(sorted(deps - {"errors"}))


def test_datasets_and_datacards_do_not_import_config():
    for name in ("datasets.py", "datacards.py"):
        assert "config" not in {m.split(".")[0] for m in _package_imports(PACKAGE / name)}
