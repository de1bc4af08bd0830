"""``rtcxfer plugins``: every installed transport and where it comes from."""

from __future__ import annotations

import click


@click.command()
def plugins() -> None:
    """List every installed transport, with the distribution and version that provides it."""
    from rtcxfer.transport.host import PluginHost

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


