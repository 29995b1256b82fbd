"""The public surface: each package's ``__all__`` is sorted, complete and importable, and types ship."""

from __future__ import annotations

import importlib
import random
import re
import tomllib
import types
from pathlib import Path

import pytest

import stepstream

PACKAGES = ["stepstream.sdk", "stepstream.core", "stepstream.avro", "stepstream.kafka", "stepstream.store"]
PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def ruff_sort_key(name: str) -> tuple[int, tuple[str | int, ...]]:
    """How ruff's RUF022 ("isort-style") orders ``__all__``.

    SCREAMING_CASE constants first (more than one character, every cased character upper case),
    then CamelCase classes (an upper-case first character), then everything else; within each, a
    case-sensitive natural sort, in which runs of digits compare as numbers.
    """
    if len(name) > 1 and name.isupper():
        category = 0
    elif name[:1].isupper():
        category = 1
    else:
        category = 2
    parts = re.split(r"(\d+)", name)
    return category, tuple(int(part) if index % 2 else part for index, part in enumerate(parts))


# Lists exactly as `ruff check --select RUF022 --fix` (ruff 0.17.6) leaves them.
RUFF_SORTED = [
    [
        "A_B",
        "FOO",
        "HTTP2",
        "ID",
        "Ab",
        "Foo",
        "Http",
        "NonRetry",
        "Nondet",
        "T",
        "_Private",
        "__version__",
        "_x",
        "a2",
        "a10",
        "aB",
        "a_b",
        "ab",
        "b",
        "x_Y",
    ],
    [
        "X1",
        "X_1",
        "ZZ",
        "_X",
        "__ALL",
        "A",
        "A1b",
        "AB_c",
        "Ab1",
        "T",
        "Zz",
        "_Foo",
        "a1",
        "a_",
        "aa",
        "b",
        "r2d2",
        "r10",
        "x9y",
        "x10y",
        "z",
    ],
]


@pytest.mark.parametrize("expected", RUFF_SORTED)
def test_the_sort_key_agrees_with_ruff(expected: list[str]) -> None:
    for seed in range(5):
        shuffled = random.Random(seed).sample(expected, len(expected))
        assert sorted(shuffled, key=ruff_sort_key) == expected


@pytest.mark.parametrize("package", PACKAGES)
def test_all_exists_and_is_sorted_the_way_ruff_sorts_it(package: str) -> None:
    module = importlib.import_module(package)

    names = getattr(module, "__all__", None)

    assert isinstance(names, list), f"{package} has no __all__ list"
    assert names, f"{package}.__all__ is empty"
    assert all(isinstance(name, str) for name in names)
    assert names == sorted(names, key=ruff_sort_key)
    assert len(set(names)) == len(names), f"{package}.__all__ names something twice"


@pytest.mark.parametrize("package", PACKAGES)
def test_every_name_in_all_is_importable_from_the_package(package: str) -> None:
    module = importlib.import_module(package)

    for name in module.__all__:
        imported = getattr(__import__(package, fromlist=[name]), name)  # `from package import name`
        assert not isinstance(imported, types.ModuleType), f"{package}.{name} is a module, not an API"


@pytest.mark.parametrize("package", PACKAGES)
def test_no_private_name_is_exported(package: str) -> None:
    module = importlib.import_module(package)

    assert [name for name in module.__all__ if name.startswith("_")] == []


@pytest.mark.parametrize("package", PACKAGES)
def test_everything_public_the_package_imports_is_in_all(package: str) -> None:
    module = importlib.import_module(package)

    public = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }

    assert public - set(module.__all__) == set(), "imported into the package but left out of __all__"


def test_py_typed_ships_in_the_package_directory() -> None:
    marker = Path(stepstream.__file__).parent / "py.typed"

    assert marker.is_file()
    package_data = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]["package-data"]
    assert "py.typed" in package_data["stepstream"]


def test_the_sdk_exports_the_workflow_api_and_the_result_of_every_primitive() -> None:
    sdk = importlib.import_module("stepstream.sdk")

    assert sdk.__all__ == [
        "CallResponse",
        "ConfigurationError",
        "Divergence",
        "FailureInfo",
        "FlowControl",
        "InvokeResult",
        "NonRetryableError",
        "NondeterminismError",
        "ReplayHistory",
        "ReplayReport",
        "RetryAfterError",
        "StartedStep",
        "StepstreamSDKError",
        "WaitResult",
        "WorkflowContext",
        "WorkflowDecorator",
        "WorkflowDefinition",
        "Workflows",
        "WorkflowsApp",
        "replay",
    ]
