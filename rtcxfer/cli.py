"""The ``rtcxfer`` command."""

from __future__ import annotations

import sys

import click

from rtcxfer import __version__, log


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rtcxfer")
@click.option(
    "--log-level",
    default="WARNING",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    help="How much rtcxfer logs to stderr.",
)
def main(log_level: str) -> None:
    """Send a job to a remote worker over WebRTC and get its results back.

    Files travel by the best transport both peers offer: a shared filesystem, chunks over
    the data channel, or any transport plugin you install.
    """
    log.enable(log_level)


@main.command()
def plugins() -> None:
    """List every installed transport, with the distribution and version that provides it."""
    from rtcxfer.plugins import PluginHost

    host = PluginHost()
    rows = [
        (info.name, str(info.rank), info.plugin, f"{info.distribution} {info.version}", info.transport.description)
        for info in host.transports()
    ]
    header = ("TRANSPORT", "RANK", "PLUGIN", "DISTRIBUTION", "DESCRIPTION")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
    for name, reason in host.failures.items():
        click.echo(f"skipped plugin {name}: {reason}", err=True)
    if host.blocked:
        click.echo(f"blocked: {', '.join(sorted(host.blocked))}", err=True)
    if not host.autoload:
        click.echo("plugin autoloading is off: built-in transports only", err=True)


@main.command()
def demo() -> None:
    """Run a local demo on loopback (for now: control frames between two real WebRTC peers).

    The whole job round trip (signaling server, worker, client, both transports) replaces this
    preview once the worker and client land.
    """
    import asyncio

    from rtcxfer.demo import run_frame_preview

    for line in asyncio.run(run_frame_preview()):
        click.echo(line)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
