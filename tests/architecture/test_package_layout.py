"""The package's shape holds: layers that only import downwards (import-linter's contracts in
setup.cfg), no import cycle anywhere, and the old flat module paths still importable."""

from __future__ import annotations

import importlib
import subprocess
import sys
import warnings

import grimp
import pytest

from rtcxfer import moved
from tests.support.cli import REPO


def strongly_connected(graph: grimp.ImportGraph) -> list[set[str]]:
    """Tarjan's algorithm: the groups of modules that import each other, directly or not."""
    index: dict[str, int] = {}
    lowest: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(module: str) -> None:
        index[module] = lowest[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in index:
                visit(imported)
                lowest[module] = min(lowest[module], lowest[imported])
            elif imported in on_stack:
                lowest[module] = min(lowest[module], index[imported])
        if lowest[module] == index[module]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == module:
                    break
            groups.append(group)

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return groups


def test_no_module_is_in_an_import_cycle():
    # Imports under `if TYPE_CHECKING:` never run; every other one counts, inside functions too.
    graph = grimp.build_graph("rtcxfer", exclude_type_checking_imports=True)
    cycles = [sorted(group) for group in strongly_connected(graph) if len(group) > 1]
    assert cycles == []


def test_the_cycle_finder_finds_a_cycle():
    graph = grimp.ImportGraph()
    for module in ("a", "b", "c"):
        graph.add_module(module)
    graph.add_import(importer="a", imported="b")
    graph.add_import(importer="b", imported="c")
    graph.add_import(importer="c", imported="a")
    assert [group for group in strongly_connected(graph) if len(group) > 1] == [{"a", "b", "c"}]


def test_the_layer_contracts_are_kept():
    # import-linter (a test dependency) with the contracts in setup.cfg, as `lint-imports` runs it.
    command = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    result = subprocess.run([sys.executable, "-c", command], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-4000:]
    assert "0 broken" in result.stdout


@pytest.mark.parametrize("old", sorted(moved.MOVED))
def test_an_old_module_path_still_imports_with_a_warning(old):
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match="has moved to"):
        module = importlib.import_module(old)
    public = [name for name in dir(module) if not name.startswith("_")]
    assert public
    for name in public[:20]:
        found = getattr(module, name)
        owners = [importlib.import_module(target) for target in moved.MOVED[old]]
        assert any(getattr(owner, name, None) is found for owner in owners)


def test_the_readme_example_imports_work_by_their_old_paths():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from rtcxfer.auth import signaling_token
        from rtcxfer.sample import build_sample_package
        from rtcxfer.signaling import SignalingServer

        from rtcxfer.client import RTCClient
        from rtcxfer.worker import RTCWorkerClient
    import rtcxfer

    assert (RTCClient, RTCWorkerClient, SignalingServer) == (
        rtcxfer.RTCClient,
        rtcxfer.RTCWorkerClient,
        rtcxfer.SignalingServer,
    )
    assert signaling_token is rtcxfer.signaling_token and build_sample_package is rtcxfer.build_sample_package


def test_the_public_names_of_the_package_resolve():
    import rtcxfer

    for name in rtcxfer.PUBLIC:
        assert getattr(rtcxfer, name) is getattr(importlib.import_module(rtcxfer.PUBLIC[name]), name)
    with pytest.raises(AttributeError):
        rtcxfer.NoSuchThing  # noqa: B018
