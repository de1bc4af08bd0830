"""A signaling server and workers as real ``rtcxfer`` processes, and ``rtcxfer submit`` against
them: the harness of end-to-end tests, ours and a transport plugin's.

::

    with start_cluster(tmp_path, token=TOKEN, env=cli_environment()) as cluster:
        cluster.worker = cluster.start_worker("lab", work_dir=tmp_path / "work")
        run = cluster.submit(package, "--results", str(tmp_path / "results"), room="lab")
        assert run.returncode == 0, describe(run)

Everything listens on 127.0.0.1. Every process a cluster starts is stopped by its own pid when
the ``with`` block ends, workers before the signaling server, so that none of them sees the
server vanish mid-job.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO

import attrs

from rtcxfer.testing.processes import (
    COMMAND_GUARD,
    WORKER_READY,
    CliProcess,
    cli_environment,
    run_cli,
    start_cli,
    start_signaling,
)

__all__ = ["Cluster", "start_cluster"]


@attrs.define
class Cluster:
    """The processes of one end-to-end test setup, all logging into ``root``."""

    #: Where every process runs (never a source tree) and writes its log.
    root: Path
    #: The signaling server's ``ws://`` URL.
    url: str
    #: Given to workers and commands as ``--token`` (None: not given).
    token: str | None
    #: The environment of one-shot commands (``submit``, ``workers``...) unless a call gives one.
    env: dict[str, str]
    #: The environment of long-running processes (the signaling server, workers) unless a call gives one.
    service_env: dict[str, str]
    python: str | Path = sys.executable
    #: Options every worker of this cluster gets (``--shared-root``, ``--legacy``...).
    worker_options: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    #: The shared storage root the cluster's workers see, where the test gives them one.
    shared: Path | None = None
    #: The test's main worker, where it keeps one.
    worker: CliProcess | None = None
    #: Every long-running process started, in order; stopped in reverse.
    services: list[CliProcess] = attrs.Factory(list)

    def start(
        self,
        name: str,
        *args: str,
        env: Mapping[str, str] | None = None,
        python: str | Path | None = None,
        prefix: Sequence[str] = (),
    ) -> CliProcess:
        """``rtcxfer ARGS`` as a long-running process of this cluster, logging to ``root/NAME.log``
        (run after ``prefix``, ``ip netns exec NS``, where it runs in another namespace)."""
        process = CliProcess(
            name, list(args), self.root, env=env or self.service_env, python=python or self.python, prefix=prefix
        )
        self.services.append(process)
        return process

    def start_worker(
        self,
        room: str,
        *options: str,
        name: str | None = None,
        work_dir: Path | None = None,
        token: str | None = None,
        env: Mapping[str, str] | None = None,
        python: str | Path | None = None,
        prefix: Sequence[str] = (),
        wait: bool = True,
    ) -> CliProcess:
        """``rtcxfer worker`` in ``room`` with the cluster's token (or ``token``) and worker options,
        then ``options``; once it waits for jobs unless ``wait`` is false."""
        args = ["worker", "--signal", self.url, "--room", room, *self.token_options(token), *self.worker_options]
        if work_dir is not None:
            args += ["--work-dir", str(work_dir)]
        worker = self.start(name or f"worker-{room}", *args, *options, env=env, python=python, prefix=prefix)
        if wait:
            worker.wait_for(WORKER_READY)
        return worker

    def token_options(self, token: str | None = None) -> list[str]:
        """``--token TOKEN`` for ``token``, or else for the cluster's (nothing where neither is set)."""
        token = token if token is not None else self.token
        return ["--token", token] if token is not None else []

    def connection_options(self, room: str, token: str | None = None) -> list[str]:
        """``--signal URL --room ROOM --token TOKEN``: where a command finds this cluster's workers."""
        return ["--signal", self.url, "--room", room, *self.token_options(token)]

    def run(
        self,
        *args: str,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        python: str | Path | None = None,
        timeout: float = COMMAND_GUARD,
        prefix: Sequence[str] = (),
    ) -> subprocess.CompletedProcess[str]:
        """``rtcxfer ARGS`` run to its end (in ``root`` unless ``cwd``)."""
        return run_cli(
            *args,
            env=env or self.env,
            cwd=cwd or self.root,
            python=python or self.python,
            timeout=timeout,
            prefix=prefix,
        )

    def submit(
        self, package: str | os.PathLike[str], *options: str, room: str, token: str | None = None, **run_options
    ) -> subprocess.CompletedProcess[str]:
        """``rtcxfer submit PACKAGE`` to ``room`` of this cluster, with ``options``, run to its end."""
        return self.run("submit", os.fspath(package), *self.connection_options(room, token), *options, **run_options)

    def start_submit(
        self,
        package: str | os.PathLike[str],
        *options: str,
        room: str,
        token: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        stderr: int | IO[str] = subprocess.PIPE,
    ) -> subprocess.Popen[str]:
        """``rtcxfer submit PACKAGE`` started in the background (the caller waits for it or kills it)."""
        args = ["submit", os.fspath(package), *self.connection_options(room, token), *options]
        return start_cli(*args, env=env or self.env, cwd=cwd or self.root, python=self.python, stderr=stderr)

    def stop(self) -> None:
        """Stop every process started, the last first."""
        for service in reversed(self.services):
            service.stop()


@contextlib.contextmanager
def start_cluster(
    root: Path,
    *,
    token: str | None,
    env: Mapping[str, str] | None = None,
    service_env: Mapping[str, str] | None = None,
    signal_token: str | None = None,
    signal_options: Sequence[str] = (),
    signal_host: str = "127.0.0.1",
    signal_port: int = 0,
    signal_prefix: Sequence[str] = (),
    python: str | Path = sys.executable,
    **fields,
) -> Iterator[Cluster]:
    """A :class:`Cluster` whose signaling server (``rtcxfer signal`` on ``signal_host`` and
    ``signal_port``, by default an ephemeral port of 127.0.0.1, after ``signal_prefix`` where it
    runs in another namespace) admits ``signal_token`` (default: ``token``; None for both:
    anyone), with ``signal_options``; every process the cluster started is stopped when the block
    ends.

    ``env`` defaults to :func:`~rtcxfer.testing.processes.cli_environment`, ``service_env`` to
    ``env``; further keyword arguments set the cluster's other fields (``worker_options``,
    ``shared``)."""
    env = dict(env) if env is not None else cli_environment()
    service_env = dict(service_env) if service_env is not None else env
    cluster = Cluster(Path(root), "", token, env, service_env, python, **fields)
    try:
        signaling, cluster.url = start_signaling(
            cluster.root,
            token=signal_token if signal_token is not None else token,
            env=service_env,
            python=python,
            host=signal_host,
            port=signal_port,
            prefix=signal_prefix,
            options=signal_options,
        )
        cluster.services.append(signaling)
        yield cluster
    finally:
        cluster.stop()
