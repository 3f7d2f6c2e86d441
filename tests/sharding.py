"""A pytest plugin: `--shard i/n` runs only the i-th of n contiguous slices of the collected tests.

The GPU check (`python -m scripts.dev.benchmark --gpu-check`) runs its device tests as n such processes at
once, so their cold Triton compiles (one per kernel specialisation, seconds each) overlap on the CPU
cores. Load it with `-p tests.sharding`.
"""

from __future__ import annotations

import pytest


def shard_slice(total: int, index: int, count: int) -> slice:
    """The items of shard `index` (1-based) of `count` among `total`: contiguous (neighbouring tests share
    kernel specialisations, so a compile is rarely repeated in two shards), sizes within one of each other."""
    return slice((index - 1) * total // count, index * total // count)


def parse_shard(value: str) -> tuple[int, int]:
    """`"i/n"` as `(i, n)`, with 1 ≤ i ≤ n; anything else raises a `ValueError` naming the option."""
    try:
        index, count = (int(part) for part in value.split("/"))
    except ValueError:
        raise ValueError(f"--shard takes i/n (e.g. 2/8), got {value!r}") from None
    if not 1 <= index <= count:
        raise ValueError(f"--shard i/n needs 1 <= i <= n, got {value!r}")
    return index, count


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--shard", default=None, help="i/n: run only the i-th of n contiguous slices of the tests")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    value = config.getoption("--shard")
    if value is None:
        return
    try:
        index, count = parse_shard(value)
    except ValueError as error:
        raise pytest.UsageError(str(error)) from None
    kept = items[shard_slice(len(items), index, count)]
    config.hook.pytest_deselected(items=[item for item in items if item not in kept])
    items[:] = kept
