"""The structure the code promises: no import cycle in lit_ortho and callbacks (imports inside
functions included), and a new activation family is one file (tests/toy_family.py) that works
everywhere a built-in family does."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from torch import nn

import lit_ortho
from lit_ortho.activations import FAMILIES, LearnableActivation

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("lit_ortho", "callbacks")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports, from every import statement anywhere in its source."""
    files = {_module_name(p): p for package in PACKAGES for p in (REPO / package).rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                # "from pkg import sub" imports the submodule pkg.sub when there is one
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            for target in targets:
                while target and target not in files:  # "import a.b.c" of a package path: the deepest module
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as a path [a, b, ..., a], or [] when there is none."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return []


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert len(graph) > 30 and graph["lit_ortho.activations.base"], "the graph was not read"
    assert find_cycle(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]


def test_the_activation_core_imports_nothing_above_it():
    """Models, tasks, data, distributed and the CLI build on the activation core, never the other way."""
    graph = import_graph()
    core = [m for m in graph if m.startswith("lit_ortho.activations")]
    for module in core:
        above = [t for t in graph[module] if t.startswith("lit_ortho.") and not t.startswith(("lit_ortho.activations", "lit_ortho.errors"))]
        assert above == [], f"{module} imports {above}"
        assert "lit_ortho" not in graph[module], f"{module} imports the lit_ortho package root"


# ---- a new family is one file --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def toy():
    import toy_family

    yield toy_family
    FAMILIES.pop("monomial", None)


def test_toy_family_through_the_spec_string(toy):
    act = lit_ortho.build_activation("monomial:3")
    assert isinstance(act, toy.MonomialActivation) and act.degree == 3
    x = torch.linspace(-2, 2, 11)
    assert torch.allclose(act(x), x)  # its paper init is the identity
    assert lit_ortho.build_activation(lit_ortho.spec_of(act)).config() == act.config()


def test_toy_family_gradients_for_inputs_and_parameters(toy):
    act = lit_ortho.build_activation("monomial(degree=2, init=unit)").double()
    x = torch.randn(7, dtype=torch.float64, requires_grad=True)
    a = act.coefficients.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x, a: act.function(x, a), (x, a))
    gains = lit_ortho.gaussian_gains(act)
    assert gains["forward_gain"] == pytest.approx(1.0, abs=1e-6)
    assert gains["backward_gain"] == pytest.approx(1.0, abs=1e-6)


def test_toy_family_fits_gelu_by_the_generic_fitter(toy):
    act = lit_ortho.build_activation("monomial(degree=4, init=gelu)")
    x = torch.linspace(-3, 3, 601, dtype=torch.float64)
    error = (act.double()(x) - nn.GELU().double()(x)).abs().max()
    identity_error = (x - nn.GELU().double()(x)).abs().max()
    assert error < 0.25 * identity_error  # moved well away from its identity start, towards GELU
    assert act.init == "gelu"


def test_toy_family_compiles_fullgraph(toy):
    torch._dynamo.reset()
    act = lit_ortho.build_activation("monomial:2")
    x = torch.randn(4, 8, requires_grad=True)
    compiled = torch.compile(act, fullgraph=True, backend="aot_eager")
    y = compiled(x)
    y.sum().backward()
    x2 = x.detach().requires_grad_()
    act(x2).sum().backward()
    assert torch.allclose(y, act(x2)) and torch.allclose(x.grad, x2.grad)


def test_toy_family_replaces_gelu_and_is_monitored(toy, tmp_path):
    import lightning as L
    from lightning.pytorch.demos.boring_classes import BoringModel

    from callbacks import ActivationVarianceMonitor

    class Model(BoringModel):
        def __init__(self):
            super().__init__()
            self.layer = nn.Sequential(nn.Linear(32, 16), nn.GELU(), nn.Linear(16, 2))

    model = Model()
    replaced = lit_ortho.replace_activations(model, "monomial:2", init="replaced")
    assert replaced == ["layer.1"] and isinstance(model.layer[1], LearnableActivation)
    monitor = ActivationVarianceMonitor(every_n_steps=1)
    trainer = L.Trainer(default_root_dir=tmp_path, max_steps=2, accelerator="cpu", logger=L.pytorch.loggers.CSVLogger(tmp_path),
                        callbacks=[monitor], enable_progress_bar=False, enable_checkpointing=False, log_every_n_steps=1,
                        limit_val_batches=0)
    trainer.fit(model)
    logged = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text().splitlines()[0]
    assert "activation_variance/layer.1" in logged
