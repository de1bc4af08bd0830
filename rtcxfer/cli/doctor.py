"""``rtcxfer doctor``: what this machine offers, checked."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from rtcxfer import __version__


@click.command()
@click.option(
    "--shared-root",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Check this directory instead of the detected one.",
)
def doctor(shared_root: Path | None) -> None:
    """Show what shared storage this machine sees and whether a peer could verify it."""
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
    sys.exit(0 if healthy else 1)


