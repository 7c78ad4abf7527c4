"""Fixtures shared by the Replicate tier's tests: the fake API on loopback (one per module, reset
before each test) and tiers pointed at it, closed after the test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from engines.cloud.replicate import ReplicateTier
from tests.engines.cloud.fake_replicate import FakeReplicate, running_fake

TOKEN = "r8_test_secret_token_0123456789"


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, FakeReplicate]]:
    with running_fake(token=TOKEN) as running:
        yield running


@pytest.fixture
def fake(server: tuple[str, FakeReplicate]) -> FakeReplicate:
    server[1].reset()
    return server[1]


@pytest.fixture
def make_tier(fake: FakeReplicate) -> Iterator[Callable[..., ReplicateTier]]:
    tiers: list[ReplicateTier] = []

    def make(**overrides: Any) -> ReplicateTier:
        options: dict[str, Any] = {
            "base_url": fake.base_url, "timeout_seconds": 5.0, "wait_seconds": 15,
            "poll_initial_seconds": 0.05, "poll_max_seconds": 0.2, "max_retries": 3,
        }
        options.update(overrides)
        tier = ReplicateTier(options.pop("token", TOKEN), **options)
        tiers.append(tier)
        return tier

    yield make
    for tier in tiers:
        tier.close()
