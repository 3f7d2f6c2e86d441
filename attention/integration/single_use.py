"""A with-block that is entered once and left where it was entered, for `apply_pladis`.

PLADIS settings live in a `ContextVar` of the thread (or asyncio task) that entered the block, so the block
must end in that same context: leaving it from another thread, or entering one block object twice, would
otherwise fail deep inside `contextvars` with a message that names neither.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from contextvars import ContextVar
from types import TracebackType
from typing import Generic, TypeVar

T = TypeVar("T")

_INNERMOST: ContextVar[SingleUseBlock | None] = ContextVar("pladis_innermost_block", default=None)


class SingleUseBlock(AbstractContextManager, Generic[T]):
    """`manager` as a block entered at most once and exited in the context (thread, asyncio task) that entered
    it; `name` is what the user called (`apply_pladis`), for the errors.

    Leaving it from another context raises `RuntimeError` after `manager` has cleaned up what it can (the
    model gets its processors back; the entering context's settings cannot be reset from elsewhere, and no
    longer act on anything); re-entering raises `RuntimeError` without touching anything.
    """

    def __init__(self, name: str, manager: AbstractContextManager[T]) -> None:
        self._name, self._manager = name, manager
        self._state = "new"
        self._token = None

    def __enter__(self) -> T:
        if self._state != "new":
            raise RuntimeError(
                f"this {self._name}(...) block was already entered; make a new {self._name}(...) for each "
                "with-statement (one object cannot be entered twice, nested or after it ended)"
            )
        self._state = "open"
        value = self._manager.__enter__()
        self._token = _INNERMOST.set(self)
        return value

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> bool | None:
        if self._state != "open":
            raise RuntimeError(f"this {self._name}(...) block has already ended")
        self._state = "ended"
        if _INNERMOST.get() is self:
            _INNERMOST.reset(self._token)
            return self._manager.__exit__(kind, error, traceback)
        try:
            self._manager.__exit__(kind, error, traceback)  # restores the model; resetting the settings fails
        except ValueError:  # contextvars: "<Token ...> was created in a different Context"
            pass
        raise RuntimeError(
            f"this {self._name}(...) block was left in another thread or asyncio task than the one that entered it "
            "(or before a block entered inside it ended); a with-block must end where it began. The model has "
            "its processors back; calls still running in the entering thread no longer get PLADIS"
        ) from error
