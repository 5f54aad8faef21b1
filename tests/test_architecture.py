"""The registry of architecture families: one place names every model.arch, and everything else asks it.

The params schema's enum and the registry name the same architectures; an unknown one is one line; the
study's published numbers apply to the AlexNet family only; the registry loads without torch; and the
package's modules import one another without a cycle.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import transferability
from transferability.errors import UserError
from transferability.features.activations import POOLINGS
from transferability.memory import _shapes
from transferability.networks import architecture
from transferability.networks.models import build_model
from transferability.params import schema

PACKAGE = Path(transferability.__file__).parent


def test_the_schema_enum_names_exactly_the_registered_architectures():
    enum = schema()["properties"]["model"]["properties"]["arch"]["enum"]
    assert len(enum) == len(set(enum))
    registered = set(architecture.names())
    assert set(enum) == registered, (f"params.schema.yaml's model.arch enum and the registry disagree: schema only "
                                     f"{set(enum) - registered}, registry only {registered - set(enum)}")


def test_an_unknown_architecture_is_one_line_naming_it_and_the_known_ones():
    model = {"arch": "lenet5", "init": "kaiming", "dropout": 0.0}
    for ask in (architecture.unit_names, architecture.smallest_input, architecture.published):
        with pytest.raises(UserError, match=re.escape("model.arch lenet5 is not a registered architecture; use one "
                                                      f"of {', '.join(architecture.names())} (")) as exc:
            ask(model)
        assert "\n" not in str(exc.value)
    state = torch.random.get_rng_state()
    with pytest.raises(UserError, match="model.arch lenet5"):
        build_model(model, 1, 5, 28, seed=0)
    assert torch.equal(torch.random.get_rng_state(), state)
    with pytest.raises(UserError, match="model.arch lenet5"):
        _shapes(model, 1, 28, 5, 0)  # never the AlexNet arithmetic by default


def test_only_the_alexnet_family_carries_the_studys_numbers_and_its_arithmetic():
    for arch in architecture.names():
        fam = architecture.family({"arch": arch})
        assert fam.published == (arch in ("caffenet", "small")), arch
        assert (fam.layers is not None) == (arch in ("caffenet", "small")), arch
        assert (fam.timm is None) == (arch in ("caffenet", "small")), arch
        assert fam.pooling in POOLINGS, arch
    with pytest.raises(ValueError, match="model.arch resnet18 is registered twice"):
        architecture.register(architecture.family({"arch": "resnet18"}))


def test_the_registry_loads_without_torch():
    """params checks (transferability check, Snakemake's start) ask the registry; torch costs seconds."""
    code = ("import sys; from transferability.networks import architecture as a; "
            "[(a.unit_names({'arch': n}), a.published({'arch': n})) for n in a.names()]; "
            "assert a.smallest_input({'arch': 'caffenet'}) == 67; assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def _imports(path: Path, module: str) -> set[str]:
    """The package modules ``module`` imports anywhere in its file (at the top or inside a function)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            target = ".".join(filter(None, [base, node.module]))  # from . import x: the module x
            found |= {f"{target}.{a.name}" for a in node.names} | ({target} if node.module else set())
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return found


def _graph(group=lambda m: m) -> dict[str, set[str]]:
    """Who imports whom in the package, each module named by ``group`` (itself, or its subpackage)."""
    files = {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): p
             for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for m, p in files.items():
        graph.setdefault(group(m), set()).update(group(n) for n in _imports(p, m) & set(files))
    return {m: targets - {m} for m, targets in graph.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (depth-first), or None."""
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> list[str] | None:
        state[m] = 1
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return [*path[path.index(n):], n]
            if n not in state and (found := visit(n, [*path, n])):
                return found
        state[m] = 2
        return None

    return next((c for m in sorted(graph) if m not in state and (c := visit(m, [m]))), None)


def test_no_two_modules_import_each_other():
    """No cycle among the package's imports, even one closed inside a function (models.build_model once
    imported backbones, which imported models)."""
    graph = _graph()
    assert _cycle(graph) is None, "import cycle: " + " -> ".join(_cycle(graph))
    assert "transferability.networks.unitnet" in (graph["transferability.networks.models"]
                                                   & graph["transferability.networks.backbones"])
    assert _cycle({**graph, "transferability.networks.unitnet": {"transferability.networks.models"}})  # it sees one


def test_the_subpackages_import_each_other_in_one_direction():
    """Collapsed to its subpackages (data, networks, training, ...; the top-level modules as they are), the
    import graph has no cycle: the architecture reads from the bottom up."""
    def subpackage(module: str) -> str:
        parts = module.split(".")
        return ".".join(parts[:2])

    graph = _graph(subpackage)
    assert {"transferability.data", "transferability.networks", "transferability.training"} <= set(graph)
    assert _cycle(graph) is None, "subpackage cycle: " + " -> ".join(_cycle(graph))
