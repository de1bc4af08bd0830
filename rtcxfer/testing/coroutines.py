"""Running a test's coroutine from a synchronous test, with a hang guard."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["run_async"]

T = TypeVar("T")


def run_async(coroutine: Coroutine[Any, Any, T], timeout: float = 120.0) -> T:
    """Run ``coroutine`` in a fresh event loop, failing after ``timeout`` seconds (a hang guard,
    never an assertion about speed)."""
    return asyncio.run(asyncio.wait_for(coroutine, timeout))
