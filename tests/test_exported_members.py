"""The public surface: one explicit ``__all__`` (ruff's RUF022 keeps it sorted) that matches
what each public module exports."""

from __future__ import annotations

import types

import pytest

import flux_async
import flux_async.testing


@pytest.mark.parametrize("module", [flux_async, flux_async.testing])
def test_all_matches_the_public_names(module: types.ModuleType) -> None:
    exported = list(module.__all__)
    assert len(exported) == len(set(exported))
    public = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and getattr(value, "__module__", "").startswith("flux_async")
    }
    undeclared = public - set(exported)
    assert not undeclared, f"{module.__name__} exports undeclared names: {undeclared}"
    for name in exported:
        assert hasattr(module, name), name


def test_every_error_derives_from_flux_error() -> None:
    for name in flux_async.__all__:
        value = getattr(flux_async, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, flux_async.FluxError), name
