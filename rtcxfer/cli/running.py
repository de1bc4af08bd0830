"""Running a command's coroutine: with uvloop when installed, and with Ctrl-C and SIGTERM
cancelling it cleanly (the cleanup it owes, such as cancelling the job on the worker, runs the
same way on every Python version and event loop)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable


class Interrupted(Exception):
    """Ctrl-C or SIGTERM stopped the command (after the running work was cancelled cleanly)."""


def run_until_interrupted(coroutine, *, first_ctrl_c: Callable[[], bool] | None = None):
    """Run a coroutine with uvloop when installed (faster data channels).

    Ctrl-C and SIGTERM cancel the coroutine, so its cleanup (cancelling the job on the worker,
    closing the session) runs the same way on every Python version and event loop; the
    command then sees :class:`Interrupted`.

    ``first_ctrl_c``, where given, is called on the first Ctrl-C (SIGINT) instead: when it
    returns True it has dealt with it (the worker drains), and only a second Ctrl-C cancels;
    when False, the coroutine is cancelled at once. SIGTERM always cancels at once.
    """
    from rtcxfer.net.peer import install_uvloop_if_available

    install_uvloop_if_available()
    interrupted = False

    async def main():
        nonlocal interrupted
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        ctrl_c_seen = False

        def interrupt() -> None:
            nonlocal interrupted
            interrupted = True
            task.cancel()

        def ctrl_c() -> None:
            nonlocal ctrl_c_seen
            first, ctrl_c_seen = not ctrl_c_seen, True
            if first and first_ctrl_c is not None and first_ctrl_c():
                return
            interrupt()

        for signum, handler in ((signal.SIGINT, ctrl_c), (signal.SIGTERM, interrupt)):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, handler)
        return await coroutine

    try:
        return asyncio.run(main())
    except (asyncio.CancelledError, KeyboardInterrupt):
        if interrupted or sys.exc_info()[0] is KeyboardInterrupt:
            raise Interrupted() from None
        raise


