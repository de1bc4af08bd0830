"""``rtcxfer signal``: the signaling server (and the browser client it serves)."""

from __future__ import annotations

from pathlib import Path

import click

from rtcxfer.cli.options import limit_option, room_token, token_file_option
from rtcxfer.cli.running import Interrupted, run_until_interrupted


@click.command("signal")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535), help="0 picks a free port.")
@click.option(
    "--token",
    envvar="RTCXFER_TOKEN",
    default=None,
    help="Token every peer must present (all rooms): peers send an HMAC of it, never the token "
    "[env RTCXFER_TOKEN].",
)
@token_file_option
@limit_option(
    "--max-per-address", click.IntRange(1), 64,
    "Sockets one remote address may hold (an eighth of them unregistered).",
)
@limit_option(
    "--max-room-peers-per-address", click.IntRange(1), 8,
    "Peers one remote address may have in one room (of 16).",
)
@limit_option(
    "--idle-timeout", click.FloatRange(0, min_open=True), 120.0,
    "Seconds a client may sit in a room without relaying anything.",
)
@click.option("--no-web", is_flag=True, help="Do not serve the browser client on the same port.")
def signal_server(
    host: str, port: int, token: str | None, token_file: Path | None, max_per_address: int,
    max_room_peers_per_address: int, idle_timeout: float, no_web: bool,
) -> None:
    """Run the signaling server that lets workers and clients find each other.

    It also serves the browser client: open http://HOST:PORT/ to submit a job from a web page.
    """
    from rtcxfer.cli.config import resolve_token
    from rtcxfer.net.signaling import run_signaling_server

    token = resolve_token(click.get_current_context(), token, token_file)

    def ready(server) -> None:
        click.echo(f"signaling server listening on {server.url}", err=True)
        if server.web_url:
            click.echo(f"web client at {server.web_url}", err=True)

    limits = {
        "max_connections_per_address": max_per_address,
        "max_unregistered_per_address": max(1, max_per_address // 8),
        "max_peers_per_address_in_room": max_room_peers_per_address,
        "idle_timeout": idle_timeout,
    }
    try:
        run_until_interrupted(
            run_signaling_server(
                host, port, default_token=room_token(token), on_ready=ready, web=not no_web, **limits
            )
        )
    except Interrupted:
        click.echo("signaling server stopped", err=True)
    except OSError as error:
        raise click.ClickException(f"cannot listen on {host}:{port}: {error.strerror or error}") from None


