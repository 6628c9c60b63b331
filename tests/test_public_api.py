"""The library's public surface: each subpackage's `__init__.py` names its public functions and
classes (imported lazily), and the public functions of the annotated modules carry type hints."""

import ast
import importlib
import os
import subprocess
import sys

import pytest

from conftest import REPO

LIBRARY = REPO / "workflow/llm_introspection"
LAZY_SUBPACKAGES = ("study", "injection", "report", "finetune", "selfknowledge")
SUBPACKAGES = (*LAZY_SUBPACKAGES, "readout")

# Every module of the library (found here, so a new module is checked too): its public functions,
# methods and dataclass fields are fully annotated.
ANNOTATED = tuple(sorted(p.relative_to(LIBRARY).with_suffix("").as_posix() for p in LIBRARY.rglob("*.py")
                         if p.stem != "__init__"))


def public_definitions(path):
    """The public (no leading underscore) top-level functions and classes a module defines."""
    tree = ast.parse(path.read_text())
    definitions = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    return [node for node in tree.body if isinstance(node, definitions) and not node.name.startswith("_")]


@pytest.mark.parametrize("package", SUBPACKAGES)
def test_every_name_in_all_resolves(package):
    module = importlib.import_module(f"llm_introspection.{package}")
    assert module.__all__ and len(set(module.__all__)) == len(module.__all__)
    for name in module.__all__:
        assert getattr(module, name) is not None, f"llm_introspection.{package}.{name}"
        assert name in dir(module)
    with pytest.raises(AttributeError):
        getattr(module, "no_such_name")


@pytest.mark.parametrize("package", LAZY_SUBPACKAGES)
def test_init_lists_exactly_the_public_definitions_of_each_module(package):
    """Each module's public functions and classes, listed under it in the package's _PUBLIC."""
    listed = importlib.import_module(f"llm_introspection.{package}")._PUBLIC
    modules = sorted(p.stem for p in (LIBRARY / package).glob("*.py") if p.stem != "__init__")
    assert sorted(listed) == modules, f"llm_introspection/{package}/__init__.py: _PUBLIC's modules"
    for stem in modules:
        defined = [node.name for node in public_definitions(LIBRARY / package / f"{stem}.py")]
        assert sorted(listed[stem]) == sorted(defined), (
            f"llm_introspection/{package}/__init__.py: _PUBLIC['{stem}'] must list the public names of {stem}.py")
        for name in listed[stem]:
            value = getattr(importlib.import_module(f"llm_introspection.{package}"), name)
            assert value.__module__ == f"llm_introspection.{package}.{stem}", name


def test_importing_subpackages_and_torch_free_modules_does_not_import_torch():
    modules = ["study", "injection", "report", "finetune", "selfknowledge", "study.statistics", "study.clustered",
               "study.coding", "study.analysis", "injection.statistics", "injection.texts", "finetune.design",
               "finetune.texts", "selfknowledge.design", "selfknowledge.texts", "selfknowledge.scoring",
               "selfknowledge.statistics", "selfknowledge.profile", "records", "models_check"]
    code = ("import sys\n" + "".join(f"import llm_introspection.{m}\n" for m in modules)
            + "import llm_introspection.study as study\nstudy.holm\nprint('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(REPO / "workflow")})
    assert result.stdout.strip() == "False", result.stderr


def unannotated(function, method=False):
    """The parameters of a function definition without a type hint, and 'return' when it has none."""
    arguments = function.args
    parameters = [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]
    parameters += [p for p in (arguments.vararg, arguments.kwarg) if p is not None]
    static = any(isinstance(d, ast.Name) and d.id == "staticmethod" for d in function.decorator_list)
    if method and not static:
        parameters = parameters[1:]  # self or cls
    missing = [p.arg for p in parameters if p.annotation is None]
    return missing + (["return"] if function.returns is None else [])


@pytest.mark.parametrize("module", ANNOTATED)
def test_public_functions_are_annotated(module):
    """Every parameter and the return of each public function and public method is annotated."""
    problems = []
    for node in public_definitions(LIBRARY / f"{module}.py"):
        if isinstance(node, ast.ClassDef):
            methods = [item for item in node.body if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))
                       and (not item.name.startswith("_") or item.name in ("__init__", "__call__"))]
            for method in methods:
                if missing := unannotated(method, method=True):
                    problems.append(f"{node.name}.{method.name}: {', '.join(missing)}")
        elif missing := unannotated(node):
            problems.append(f"{node.name}: {', '.join(missing)}")
    assert not problems, f"{module}.py lacks type hints: " + "; ".join(problems)


@pytest.mark.parametrize("module", ANNOTATED)
def test_annotations_name_real_types(module):
    """Every annotation of the module evaluates, with its TYPE_CHECKING imports run: no hint names a
    type that is not there (under `from __future__ import annotations` nothing else would notice)."""
    path = LIBRARY / f"{module}.py"
    tree = ast.parse(path.read_text())
    namespace = dict(vars(importlib.import_module("llm_introspection." + module.replace("/", "."))))
    for node in tree.body:
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            exec(compile(ast.Module(body=node.body, type_ignores=[]), str(path), "exec"), namespace)
    for node in ast.walk(tree):
        annotations = [node.annotation] if isinstance(node, (ast.AnnAssign, ast.arg)) else []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            annotations.append(node.returns)
        for annotation in filter(None, annotations):
            eval(compile(ast.Expression(annotation), str(path), "eval"), namespace)
