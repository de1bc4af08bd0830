"""What the ``rtcxfer`` command tells a user when something stops it: why, what to do, and
with which exit code.

Each function turns an error into one message; the command prints it and picks the exit code.
"""

from __future__ import annotations

from rtcxfer.protocol.errors import (
    AuthenticationError,
    IceFailedError,
    NoWorkerError,
    UnprovenWorkerError,
    WorkerWaitTimeoutError,
    describe,
)

#: Exit codes of ``rtcxfer submit`` (and ``workers``): success, the job failed, a usage error
#: (not a job package, a forced transport not usable), no worker reachable or the token refused,
#: cancelled with Ctrl-C.
EXIT_OK, EXIT_JOB_FAILED, EXIT_USAGE, EXIT_CONNECTION, EXIT_CANCELLED = 0, 1, 2, 3, 130
#: The worker stopped (its operator shut it down, or it went away) during the job: nothing
#: failed in the job and the user did not cancel it; submit again once a worker is back (75 is
#: EX_TEMPFAIL of sysexits.h: "try again later").
EXIT_WORKER_STOPPED = 75


#: Where a peer's token comes from, in the words of every message that asks for one.
TOKEN_SOURCES = "--token, --token-file or RTCXFER_TOKEN"


def signaling_refusal(
    code: str, url: str, room: str, *, role: str, peer_id: str | None = None, token_given: bool = True
) -> str | None:
    """The message for a refusal by the signaling server with ``code``, or ``None`` if it has
    no advice of its own. ``role`` is ``client`` or ``worker``; ``token_given``: whether the
    peer had a token at all (none is a missing token, not a wrong one)."""
    if code == "bad-token":
        consequence = "so no worker was tried" if role == "client" else "so this worker did not join the room"
        if not token_given:
            return (
                f"the signaling server at {url} needs a room token and none was given, {consequence}. "
                f"Give the token the server was started with (`rtcxfer signal --token`): {TOKEN_SOURCES}, "
                "or --signal-token when the server has a token of its own"
            )
        return (
            f"the signaling server at {url} refused the room token (bad-token), {consequence}. "
            f"Use the token the server was started with (`rtcxfer signal --token`): {TOKEN_SOURCES}, "
            "or --signal-token when the server has a token of its own"
        )
    if code == "duplicate-peer":
        who = f"the id {peer_id!r}" if peer_id else "this peer's id"
        hint = "start this worker with another --peer-id" if role == "worker" else "try again"
        return f"another peer already uses {who} in room {room!r} on {url}: {hint} (or stop the other one)"
    if code == "room-full":
        return f"room {room!r} on {url} is full: use another --room, or ask the server's operator"
    return None


def tls_failure(error: BaseException) -> str | None:
    """The message for a ``wss://`` signaling server whose certificate does not verify, or None
    for any other error."""
    from rtcxfer.net.signaling import SignalingTlsError

    if not isinstance(error, SignalingTlsError):
        return None
    return (
        f"{error}. If a private CA issued it, give that CA's certificate with --ca-file FILE (or RTCXFER_CA_FILE); "
        "else check the server's certificate (its name must match the host in --signal, and it must be current)"
    )


def connect_failure(error: BaseException, url: str, room: str, timeout: float, *, token_given: bool = True) -> str:
    """The message for a ``submit`` that could not reach a worker (exit 3); ``token_given``:
    whether ``submit`` had a token at all."""
    from rtcxfer.net.signaling import SignalingServerError, SignalingTimeoutError

    tls = tls_failure(error)
    if tls is not None:
        return tls
    if isinstance(error, UnprovenWorkerError):
        return (
            f"{error}. Your --token is not in question: the worker could not prove it knows it. "
            "Ask whoever runs the room which worker is real (rtcxfer workers lists them; --worker ID picks one)"
        )
    if isinstance(error, AuthenticationError):
        if not token_given:
            return f"no token was given, and the worker needs its token: {TOKEN_SOURCES} ({error})"
        return f"{error}. Check that --token (or --token-file, RTCXFER_TOKEN) is the worker's token"
    if isinstance(error, WorkerWaitTimeoutError):
        return f"{error}. --timeout SECONDS waits longer, --timeout 0 without limit"
    if isinstance(error, NoWorkerError):
        return str(error)  # it names the workers the room has and what they lack
    if isinstance(error, IceFailedError):
        return ice_failure(error)
    if isinstance(error, SignalingServerError):
        advice = signaling_refusal(error.code, url, room, role="client", token_given=token_given)
        if advice is not None:
            return advice
    if isinstance(error, SignalingTimeoutError) and "joined room" in str(error):
        return (
            f"no worker joined room {room!r} on {url} within {timeout:g} s. Is a worker running with "
            f"--room {room} and the same --signal? (--timeout waits longer, --timeout 0 without limit)"
        )
    if "cannot reach the signaling server" in str(error):
        return f"{error}. Is `rtcxfer signal` running there, and is --signal right?"
    return f"cannot reach a worker in room {room!r} via {url}: {describe(error)}"


def ice_failure(error: IceFailedError) -> str:
    """The message for a worker that signaling found but that no network path reached (exit 3):
    what each side gathered, the likely cause and the remedy (:mod:`rtcxfer.net.ice_paths`)."""
    return (
        f"{error}. (The signaling server found the worker; it is the path between the two machines that "
        "failed, so retrying alone will not help)"
    )


def worker_stopped(job_id: str, worker_id: str | None, reason: str | None) -> str:
    """The message for a job cut short by its worker stopping (exit 75): whether its operator
    shut it down (the worker said so) or it went away, and that submitting again is all it takes."""
    from rtcxfer.protocol.texts import WORKER_SHUTTING_DOWN

    # "the worker gpu2", but not "the worker worker" for a worker of the default id.
    worker = f"the worker {worker_id}" if worker_id and not worker_id.startswith("worker") else "the worker"
    if reason and WORKER_SHUTTING_DOWN in reason:
        what = f"{worker} was shut down by its operator while running job {job_id}"
    else:
        what = f"{worker} went away while running job {job_id} (it stopped or lost its connection)"
    return (
        f"{what}, so the job did not finish; nothing is wrong with the job. "
        "Submit it again: another worker of the room, or this one once it is back, runs it"
    )


def worker_needs_a_token() -> str:
    """Why ``rtcxfer worker`` will not start without a token, and how to give one."""
    return (
        f"a worker needs a token ({TOKEN_SOURCES}); without one anyone in the room could run jobs here. "
        "Make one with: python3 -c 'import secrets; print(secrets.token_urlsafe(32))' > token; chmod 600 token "
        "(then --token-file token). To really serve anyone, pass --insecure-no-token."
    )
