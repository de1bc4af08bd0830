"""``rtcxfer doctor``: what this machine offers, checked; with ``--signal``, its network too."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from rtcxfer import __version__
from rtcxfer.cli.options import (
    apply_options,
    convert_signal_urls,
    room_token,
    signaling_tls,
    tls_options,
    token_file_option,
)


@click.command()
@click.option(
    "--shared-root",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Check this directory instead of the detected one.",
)
@click.option(
    "--signal",
    "signal_url",
    envvar="RTCXFER_SIGNAL_URL",
    default=None,
    metavar="URL",
    callback=convert_signal_urls,
    help="Also check the network against this signaling server, as a client of --room: TCP and TLS, admission, "
    "the STUN and TURN servers it hands out, the ICE candidates gathered with them, TURN over UDP and TCP, "
    "whether this network's NAT keeps ports, and what that means for reaching a worker "
    "[env RTCXFER_SIGNAL_URL].",
)
@click.option(
    "--room", envvar="RTCXFER_ROOM", default="default", show_default=True,
    help="The room to check admission to [env RTCXFER_ROOM].",
)  # fmt: skip
@click.option(
    "--token", envvar="RTCXFER_TOKEN", default=None,
    help="The token (only an HMAC of it goes to the signaling server) [env RTCXFER_TOKEN].",
)  # fmt: skip
@token_file_option
@click.option(
    "--signal-token", envvar="RTCXFER_SIGNAL_TOKEN", default=None,
    help="The signaling server's token, if it differs from --token [env RTCXFER_SIGNAL_TOKEN].",
)  # fmt: skip
@apply_options(tls_options)
def doctor(
    shared_root: Path | None, signal_url: str | None, room: str, token: str | None, token_file: Path | None,
    signal_token: str | None, ca_file: Path | None,
) -> None:
    """Show what shared storage this machine sees and whether a peer could verify it; with
    --signal, whether (and how) a worker could be reached from this network.

    Exit status 1 when a check found a problem: the storage named is not there or not
    verifiable, or (with --signal) no worker outside this network could be reached by any path.
    """
    from rtcxfer.files.shared_storage import KNOWN_MOUNT_POINTS, check_probe, detect_shared_root, write_probe
    from rtcxfer.protocol.frames import SharedProbe
    from rtcxfer.transport.host import PluginHost

    choice = detect_shared_root(shared_root)
    click.echo(f"rtcxfer {__version__} on Python {sys.version.split()[0]}")
    click.echo(f"shared storage root: {choice.root or 'none'} ({choice.source})")
    click.echo(f"  checked: --shared-root, ${'SHARED_STORAGE_ROOT'}, then {', '.join(KNOWN_MOUNT_POINTS)}")
    healthy = True
    if choice.root is None and (shared_root is not None or os.environ.get("SHARED_STORAGE_ROOT", "").strip()):
        # Asked for, and not there: a typo or a missing mount, not a machine without one.
        click.echo("  PROBLEM: the root you named is not a directory: fix the path, or mount the storage there")
        healthy = False
    if choice.root is not None:
        writable = os.access(choice.root, os.W_OK)
        click.echo(f"  writable: {'yes' if writable else 'no'}")
        if writable:
            probe = write_probe(choice.root)
            try:
                verdict = check_probe(choice.root, SharedProbe(probe.sha256, probe.relative_path))
            finally:
                probe.remove()
            click.echo(f"  probe written and read back through the worker's validator: {verdict}")
            click.echo("  a peer mounting the same storage will verify it at the start of each session")
            healthy = verdict == "verified"
        else:
            healthy = False
    host = PluginHost()
    click.echo("transports: " + ", ".join(f"{i.name} ({i.distribution} {i.version})" for i in host.transports()))
    try:
        import uvloop  # noqa: F401

        click.echo("event loop: uvloop available (used by the rtcxfer command)")
    except ImportError:
        click.echo("event loop: asyncio (install rtcxfer[fast] for uvloop)")
    if signal_url:
        from rtcxfer.cli.config import resolve_token
        from rtcxfer.net.signaling.client import split_signal_urls

        secret = resolve_token(click.get_current_context(), token, token_file)
        # Several URLs (replicas, RTCXFER_SIGNAL_URL="ws://a,ws://b"): each is checked.
        for url in split_signal_urls(signal_url):
            reachable = print_network_check(url, room, room_token(signal_token or secret), signaling_tls(ca_file))
            healthy = healthy and reachable
    sys.exit(0 if healthy else 1)


def print_network_check(url: str, room: str, token: str | None, tls) -> bool:
    """Print the network checks against ``url`` and their verdict; whether a worker could be reached."""
    from rtcxfer.cli.messages import signaling_refusal, tls_failure
    from rtcxfer.cli.running import Interrupted, run_until_interrupted
    from rtcxfer.net.network_check import PROBLEM, check_network

    click.echo(f"network, as a client of room {room!r} on {url}:")
    try:
        report = run_until_interrupted(check_network(url, room, token=token, signaling_ssl=tls))
    except Interrupted:
        click.echo("  interrupted", err=True)
        sys.exit(130)
    for step in report.steps:
        click.echo(f"  {step.name}: {'PROBLEM: ' if step.status == PROBLEM else ''}{step.text}")
    error = report.signaling_error
    code = getattr(error, "code", None)
    advice = (signaling_refusal(code, url, room, role="client", token_given=token is not None) if code else None) or (
        tls_failure(error) if error is not None else None
    )
    if advice:
        click.echo(f"  advice: {advice}")
    click.echo(f"verdict: {report.verdict.text}")
    return report.verdict.reachable
