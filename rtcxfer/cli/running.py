"""Running a command's coroutine: with uvloop when installed, and with Ctrl-C and SIGTERM
cancelling it cleanly (the cleanup it owes, such as cancelling the job on the worker, runs the
same way on every Python version and event loop)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys


class Interrupted(Exception):
    """Ctrl-C or SIGTERM stopped the command (after the running work was cancelled cleanly)."""


def run_until_interrupted(coroutine):
    """Run a coroutine with uvloop when installed (faster data channels).

    Ctrl-C and SIGTERM cancel the coroutine, so its cleanup (cancelling the job on the worker,
    closing the session) runs the same way on every Python version and event loop; the
    command then sees :class:`Interrupted`.
    """
    from rtcxfer.net.peer import install_uvloop_if_available

    install_uvloop_if_available()
    interrupted = False

    async def main():
        nonlocal interrupted
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()

        def interrupt() -> None:
            nonlocal interrupted
            interrupted = True
            task.cancel()

        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, interrupt)
        return await coroutine

    try:
        return asyncio.run(main())
    except (asyncio.CancelledError, KeyboardInterrupt):
        if interrupted or sys.exc_info()[0] is KeyboardInterrupt:
            raise Interrupted() from None
        raise


