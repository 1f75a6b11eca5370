"""The package layout: public import paths hold, no import cycles, modules stay small.

Subpackages import one way, and no module is part of an import cycle, not even through
an import made only for type checking or inside a function.

The modules live in subpackages by subsystem (``_core``, ``_request``, ``_polling``,
``_engine``, ``_providers``, ``_batching``, ``_web``, ``_fleet``, ``testing``); a user never
imports them. What a user imports is pinned here: ``flux_async.__all__``,
``flux_async.testing.__all__``, and every ``from flux_async... import`` / ``::: flux_async...``
path written in the README, the docs and the examples.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

import flux_async
import flux_async.testing

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "flux_async"
MAX_LINES = 400

PUBLIC = {
    "APIError", "AmbiguousSubmitError", "AsyncFlux", "AuthenticationError", "BadRequestError",
    "BaseRequest", "BatchChangedError", "BatchInputError", "BatchSummary", "ClientClosedError",
    "ClientStatistics", "Clock", "ConfigurationError", "ConnectError", "Coordinator",
    "CoordinatorChanged", "CoordinatorError", "DownloadError", "Event", "EventHook",
    "Flux2FlexRequest", "Flux2KleinRequest", "Flux2Request", "FluxDevRequest", "FluxError",
    "FluxExpandRequest", "FluxFillRequest", "FluxPro11Request", "FluxUltraRequest",
    "GeneratedImage", "GenerationError", "ImageSaved", "IncompleteDownloadError",
    "InsufficientCreditsError", "KontextRequest", "MODELS", "MalformedReplyError",
    "ManualClock", "ModelSpec", "ModerationError", "OnCancel", "OrphanStatistics", "Outcome",
    "PollReply", "RateLimitError", "RequestTimeoutError", "ResultExpiredError", "ScaledClock",
    "ServerError", "StorageError", "SystemClock", "Task", "TaskError", "TaskFailed",
    "TaskNotFoundError", "TaskOrphaned", "TaskPolled", "TaskReady", "TaskResult",
    "TaskSubmitted", "TaskTimeoutError", "TransportError", "UnexpectedError",
    "UnknownStatusError", "ValidationError", "WebhookReceived", "WebhookReceiverStatistics",
    "WebhookRejected", "__version__", "build_request", "get_model", "new_webhook_secret",
    "run_batch", "sign_body", "validate_request",
}  # fmt: skip

TESTING = {
    "FAKE_API_KEY", "HostileConfig", "HostileReply", "HostileRequest", "HostileServer",
    "KNOWN_MODELS", "KeySighting", "ManualClock", "RequestRecord", "ScaledClock", "SimTask",
    "Simulator", "SimulatorConfig", "SimulatorRecords", "SimulatorTransport", "SubmitRecord",
    "WebhookDelivery", "WebhookSender", "serve",
}  # fmt: skip

# Modules allowed over MAX_LINES: none since issue 12. A module that grows past the limit
# fails the test: split it where the code has a seam.
OVER_LIMIT: set[str] = set()

DOCUMENTED_IMPORT = re.compile(r"^\s*from (flux_async[\w.]*) import \(?([\w, ]+)", re.MULTILINE)
DIRECTIVE = re.compile(r"^::: (flux_async[\w.]*)$", re.MULTILINE)


def test_public_names_are_unchanged_and_resolve() -> None:
    assert set(flux_async.__all__) == PUBLIC
    assert set(flux_async.testing.__all__) == TESTING
    for name in PUBLIC:
        assert getattr(flux_async, name) is not None, name
    for name in TESTING:
        assert getattr(flux_async.testing, name) is not None, name


def documents() -> list[Path]:
    found = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    return found + sorted((ROOT / "examples").rglob("*.py"))


def documented_paths() -> list[tuple[str, str]]:
    """Every (module, name) a document imports from flux_async, and every ::: directive."""
    paths: set[tuple[str, str]] = set()
    for document in documents():
        text = document.read_text(encoding="utf-8")
        for module, names in DOCUMENTED_IMPORT.findall(text):
            for name in names.split(","):
                if name.split(" as ")[0].strip():
                    paths.add((module, name.split(" as ")[0].strip()))
        for dotted in DIRECTIVE.findall(text):
            paths.add(("", dotted))
    return sorted(paths)


def test_the_documents_import_something() -> None:
    modules = {module for module, _ in documented_paths() if module}
    assert {"flux_async", "flux_async.testing"} <= modules


@pytest.mark.parametrize(("module", "name"), documented_paths())
def test_each_documented_import_path_resolves(module: str, name: str) -> None:
    if module:
        assert hasattr(importlib.import_module(module), name), f"from {module} import {name}"
        return
    # A ::: directive: the longest importable prefix, then attributes.
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target: object = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[cut:]:
            target = getattr(target, attribute)
        return
    pytest.fail(f"::: {name} does not resolve")


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_no_module_is_over_the_line_limit_except_the_listed_ones() -> None:
    over = {
        path.relative_to(PACKAGE).as_posix()
        for path in modules()
        if len(path.read_text(encoding="utf-8").splitlines()) > MAX_LINES
    }
    assert over <= OVER_LIMIT, f"new modules over {MAX_LINES} lines: {sorted(over - OVER_LIMIT)}"
    assert over >= OVER_LIMIT, f"split, take off OVER_LIMIT: {sorted(OVER_LIMIT - over)}"


def unit_of(module: str) -> str:
    """The layer a module belongs to: its subpackage, or itself at the top level."""
    return ".".join(module.split(".")[:2])


def imported_modules(path: Path) -> set[str]:
    """Absolute names of the flux_async modules ``path`` imports (anywhere in the file)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    package = parts[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("flux_async"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if not target.startswith("flux_async"):
                continue
            found.add(target)
            if not node.module:  # from . import x: x may be a module
                found.update(f"{target}.{a.name}" for a in node.names)
    return found


def unit_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in modules():
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        source = unit_of(name.removesuffix(".__init__"))
        edges = graph.setdefault(source, set())
        for target in imported_modules(path):
            # ``from . import __version__`` names the package itself, not a module in it.
            unit = unit_of(target)
            if unit != source and not unit.split(".")[-1].startswith("__"):
                edges.add(unit)
    return graph


def first_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """Return one import cycle of ``graph`` (its first node repeated at the end), or None."""
    state: dict[str, int] = {}
    trail: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        trail.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*trail[trail.index(target) :], target]
            if target not in state:
                cycle = visit(target)
                if cycle is not None:
                    return cycle
        trail.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle is not None:
                return cycle
    return None


def test_subpackages_import_one_way() -> None:
    graph = unit_graph()
    assert {"flux_async._engine", "flux_async._request", "flux_async._core"} <= graph.keys()
    assert "flux_async._core" in graph["flux_async._engine"]
    cycle = first_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def module_graph() -> dict[str, set[str]]:
    """Which flux_async modules each one imports, type-checking and local imports included.

    An import of a module's own package (``from . import scripts``) is no edge: the
    package is always initialised before the modules in it.
    """
    named = {path: ".".join(path.relative_to(ROOT).with_suffix("").parts) for path in modules()}
    known = {name.removesuffix(".__init__") for name in named.values()}
    graph: dict[str, set[str]] = {}
    for path, dotted in named.items():
        name = dotted.removesuffix(".__init__")
        ancestors = {".".join(name.split(".")[:cut]) for cut in range(1, name.count(".") + 1)}
        graph[name] = {
            target
            for target in imported_modules(path)
            if target in known and target != name and target not in ancestors
        }
    return graph


def test_no_module_is_part_of_an_import_cycle() -> None:
    assert first_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    graph = module_graph()
    assert "flux_async.testing._transport" in graph["flux_async.testing._app"]
    assert "flux_async._fleet" not in graph["flux_async._fleet.registry"]  # its own package
    cycle = first_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])
