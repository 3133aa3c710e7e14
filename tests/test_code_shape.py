"""The shape of the code the project promises its maintainers: short functions, no private names
across modules, no import cycles, documented configs and codecs."""

import ast
import dataclasses
import inspect
from pathlib import Path

import pytest

SRC = Path(__file__).parent.parent / "src" / "actzip"
MODULES = sorted(SRC.rglob("*.py"))
MAX_LINES = 60


def _name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The module an ImportFrom names, relative imports resolved against `module`."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[:len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def test_no_function_is_longer_than_a_screen_outside_numba_kernels():
    long = []
    for path in MODULES:
        for node in ast.walk(_tree(path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                kernel = any("jit" in ast.unparse(d) for d in node.decorator_list)
                if not kernel and node.end_lineno - node.lineno + 1 > MAX_LINES:
                    long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name}")
    assert not long, long


def test_no_private_name_is_imported_from_another_module():
    private = []
    for path in MODULES:
        tree = _tree(path)
        modules = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                private += [f"{path.relative_to(SRC)}: {a.name}" for a in node.names
                            if a.name.startswith("_") and not a.name.startswith("__")]
                modules.update(a.asname or a.name for a in node.names)
            elif isinstance(node, ast.Import):
                modules.update((a.asname or a.name).split(".")[0] for a in node.names)
        private += [f"{path.relative_to(SRC)}: {ast.unparse(n)}" for n in ast.walk(tree)
                    if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id in modules
                    and n.attr.startswith("_") and not n.attr.startswith("__")]
    assert not private, private


def test_no_codec_imports_a_sibling_codec():
    """A codec module (one that registers a codec) imports shared helpers (base, bits, layout, ...),
    never another codec's module: the coders a codec nests are looked up by name in the registry."""
    codecs_dir = SRC / "codecs"
    codec_modules = {_name(p) for p in codecs_dir.glob("*.py") if "@register" in p.read_text()}
    found = []
    for path in codecs_dir.glob("*.py"):
        if _name(path) not in codec_modules:
            continue
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.ImportFrom):
                target = _absolute(_name(path), False, node)
                names = {target} | {f"{target}.{a.name}" for a in node.names}
                found += [f"{path.name} imports {n}" for n in sorted(names & codec_modules) if n != _name(path)]
    assert len(codec_modules) >= 10 and not found, found


def test_module_level_imports_form_no_cycle():
    graph = {}
    for path in MODULES:
        name = _name(path)
        deps = set()
        for node in _tree(path).body:  # module level only: imports inside functions are deferred on purpose
            if isinstance(node, ast.ImportFrom):
                target = _absolute(name, path.name == "__init__.py", node)
                deps.update(f"{target}.{a.name}" if f"{target}.{a.name}" in {_name(p) for p in MODULES} else target
                            for a in node.names)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
        graph[name] = {d for d in deps if d.startswith("actzip") and d != name}
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for dep in graph.get(node, ()):
            if state.get(dep) == "open":
                cycles.append(stack[stack.index(dep):] + [dep] if dep in stack else [node, dep])
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = "done"

    for module in graph:
        if module not in state:
            visit(module, [module])
    assert not cycles, cycles


def _configs():
    from actzip.analysis import AnalyzeConfig
    from actzip.lossy.config import EvaluateConfig
    from actzip.sparsify.fatrelu import FATReLU
    from actzip.sparsify.penalty import L1, Hoyer
    from actzip.sparsify.pixelmask import PixelMask
    from actzip.train import TrainConfig

    return [AnalyzeConfig, EvaluateConfig, TrainConfig, PixelMask, L1, Hoyer, FATReLU]


@pytest.mark.parametrize("config", _configs(), ids=lambda c: c.__name__)
def test_every_config_documents_each_of_its_fields(config):
    doc = inspect.getdoc(config) or ""
    assert not doc.startswith(config.__name__ + "("), "only the generated dataclass signature"
    missing = [f.name for f in dataclasses.fields(config) if f"{f.name}:" not in doc]
    assert not missing, missing


def test_every_codec_documents_each_of_its_parameters():
    from actzip import codecs

    for name, cls in codecs.registry().items():
        params = [p for p in inspect.signature(cls).parameters if p != "bits"]
        doc = inspect.getdoc(cls) or ""
        assert doc, name
        missing = [p for p in params if f"{p}:" not in doc]
        assert not missing, (name, missing)


def test_the_lossy_codecs_declare_their_reconstruction():
    from actzip import codecs

    lossy = {n for n, c in codecs.registry().items() if not c.lossless}
    assert lossy == {n for n, c in codecs.registry().items() if issubclass(c, codecs.LossyCodec)} == {"requant", "dctcm", "klt"}
    assert "reconstruct" in codecs.LossyCodec.__abstractmethods__
