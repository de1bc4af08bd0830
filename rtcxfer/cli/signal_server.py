"""``rtcxfer signal``: the signaling server (and the browser client it serves), the STUN and TURN
servers it hands out with short-lived TURN credentials, and its TLS (``wss://``)."""

from __future__ import annotations

from pathlib import Path

import click

from rtcxfer.cli.options import ICE_LIMITS, check_ice_urls, limit_option, room_token, token_file_option
from rtcxfer.cli.running import Interrupted, run_until_interrupted
from rtcxfer.protocol.ice import DEFAULT_TURN_TTL


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
    "Peers one remote address may have in one room (of 16) without the room's token; "
    "peers that give the token are not counted.",
)
@limit_option(
    "--idle-timeout", click.FloatRange(0, min_open=True), 120.0,
    "Seconds a client may sit in a room without relaying anything.",
)
@click.option("--no-web", is_flag=True, help="Do not serve the browser client on the same port.")
@click.option(
    "--allow-origin", "allowed_origins", multiple=True, metavar="ORIGIN",
    help="A web origin (scheme://host[:port]) whose pages may open a signaling socket here, beside this server's "
    "own page (repeatable). Browsers on other sites are refused; programs send no origin and are not affected.",
)
@click.option(
    "--stun", multiple=True, metavar="URL", callback=check_ice_urls,
    help="A STUN server every admitted peer is told to use (repeatable): stun:HOST[:PORT] (port 3478). " + ICE_LIMITS,
)
@click.option(
    "--turn", multiple=True, metavar="URL", callback=check_ice_urls,
    help="A TURN server every admitted peer is told to use, with credentials made for it from --turn-secret-file "
    "(repeatable): turn:HOST[:PORT][?transport=udp|tcp] (port 3478, udp), turns:HOST[:PORT] (port 5349, TLS over "
    "TCP). " + ICE_LIMITS,
)
@click.option(
    "--turn-secret-file", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="FILE",
    help="A file whose first line is the TURN server's shared secret (coturn: use-auth-secret, "
    "static-auth-secret): each peer gets a credential that expires, never the secret.",
)
@limit_option(
    "--turn-ttl", click.IntRange(60, 30 * 86400), DEFAULT_TURN_TTL,
    "Seconds a TURN credential is valid for allocating a relay (a relay outlives it; peers that stay "
    "registered get fresh ones every half of it).",
)
@click.option(
    "--certfile", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="FILE",
    help="Serve wss:// (and https:// for the web client) with this certificate chain (PEM, the server's "
    "certificate first; its key too unless --keyfile).",
)
@click.option(
    "--keyfile", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="FILE",
    help="The private key (PEM) of --certfile.",
)
@click.option(
    "--redis", "redis_url", envvar="RTCXFER_REDIS", default=None, metavar="URL",
    help="Share rooms with every `rtcxfer signal` given the same Redis (redis://HOST:PORT/DB, rediss:// for "
    "TLS): replicas behind one name, a peer on one reachable from all. Needs `pip install rtcxfer[redis]` "
    "[env RTCXFER_REDIS].",
)
@limit_option(
    "--redis-expiry", click.FloatRange(0.5, 300), 3.0,
    "With --redis: seconds the peers of a replica that died stay listed (its heartbeat's expiry).",
)
def signal_server(
    host: str, port: int, token: str | None, token_file: Path | None, max_per_address: int,
    max_room_peers_per_address: int, idle_timeout: float, no_web: bool, stun: tuple[str, ...],
    turn: tuple[str, ...], turn_secret_file: Path | None, turn_ttl: int, certfile: Path | None,
    keyfile: Path | None, allowed_origins: tuple[str, ...], redis_url: str | None, redis_expiry: float,
) -> None:
    """Run the signaling server that lets workers and clients find each other.

    It also serves the browser client: open http://HOST:PORT/ to submit a job from a web page.

    With --stun and --turn it tells every peer it admitted which STUN and TURN servers to use, the
    TURN ones with a credential made for that peer alone from --turn-secret-file (the TURN REST API
    that coturn's use-auth-secret checks); peers then need no ICE flags. With --certfile and
    --keyfile it speaks wss://, which keeps the room token and those credentials off the wire.

    With --redis several of them (on one host or many, behind a load balancer or one DNS name) share
    their rooms: give each the same --redis, --token and ICE options. A peer whose replica dies
    registers again on another.
    """
    from rtcxfer.cli.config import resolve_token
    from rtcxfer.net.signaling import run_signaling_server
    from rtcxfer.protocol.errors import SharedRoomsError

    token = resolve_token(click.get_current_context(), token, token_file)
    shared = _shared_rooms(redis_url, redis_expiry)
    ice_servers = _ice_config(stun, turn, turn_secret_file, turn_ttl)
    tls = _tls_context(certfile, keyfile)

    def ready(server) -> None:
        click.echo(f"signaling server listening on {server.url}", err=True)
        if server.web_url:
            click.echo(f"web client at {server.web_url}", err=True)
        if ice_servers is not None:
            urls = ", ".join(str(url) for url in (*ice_servers.stun, *ice_servers.turn))
            lifetime = f" (TURN credentials valid {ice_servers.turn_ttl} s)" if ice_servers.turn else ""
            click.echo(f"peers are told to use {urls}{lifetime}", err=True)
        if redis_url:
            from rtcxfer.net.signaling.redis_rooms import redacted_url

            click.echo(f"rooms shared through Redis at {redacted_url(redis_url)}", err=True)

    limits = {
        "max_connections_per_address": max_per_address,
        "max_unregistered_per_address": max(1, max_per_address // 8),
        "max_peers_per_address_in_room": max_room_peers_per_address,
        "idle_timeout": idle_timeout,
    }
    try:
        run_until_interrupted(
            run_signaling_server(
                host, port, default_token=room_token(token), on_ready=ready, web=not no_web,
                ice_servers=ice_servers, ssl=tls, allowed_origins=allowed_origins, **limits, **shared
            )
        )
    except Interrupted:
        click.echo("signaling server stopped", err=True)
    except SharedRoomsError as error:
        raise click.ClickException(str(error)) from None
    except OSError as error:
        raise click.ClickException(f"cannot listen on {host}:{port}: {error.strerror or error}") from None


def _shared_rooms(redis_url: str | None, expiry: float) -> dict:
    """The server's options for --redis (checked as far as can be without connecting)."""
    if not redis_url:
        return {}
    try:
        from rtcxfer.net.signaling.redis_rooms import redacted_url
    except ImportError:
        raise click.UsageError("--redis needs the redis library: pip install 'rtcxfer[redis]'") from None

    scheme = redis_url.partition("://")[0].lower()
    if scheme not in ("redis", "rediss", "unix"):
        raise click.BadParameter(f"{redacted_url(redis_url)!r} is not a Redis URL (redis://HOST:PORT/DB, rediss://, unix://)",
                                 param_hint="--redis")
    return {"redis_url": redis_url, "membership_ttl": expiry}


def _ice_config(stun: tuple[str, ...], turn: tuple[str, ...], secret_file: Path | None, ttl: int):
    """The IceServerConfig of the ICE options, or None without any; a usage error (exit 2) if they
    do not fit together."""
    import time

    from rtcxfer.cli.config import ConfigError, read_secret_file
    from rtcxfer.protocol.errors import IceServerError
    from rtcxfer.protocol.ice import IceServerConfig

    if turn and secret_file is None:
        raise click.UsageError("--turn needs --turn-secret-file FILE: the TURN server's shared secret, from which "
                               "each peer's credential is made")
    if secret_file is not None and not turn:
        raise click.UsageError("--turn-secret-file is for --turn URL: give the TURN server's URL too")
    if not (stun or turn):
        return None
    if turn and not stun:
        click.echo(f"note: --turn without --stun: {ICE_LIMITS}", err=True)
    secret = None
    if secret_file is not None:
        try:
            secret = read_secret_file(secret_file, "TURN secret")
        except ConfigError as error:
            raise click.UsageError(str(error)) from None
    try:
        config = IceServerConfig(stun=stun, turn=turn, turn_secret=secret, turn_ttl=ttl)
        config.check(time.time())
    except IceServerError as error:
        raise click.UsageError(str(error)) from None
    return config


def _tls_context(certfile: Path | None, keyfile: Path | None):
    if certfile is None and keyfile is None:
        return None
    if certfile is None:
        raise click.UsageError("--keyfile needs --certfile: the certificate chain it belongs to")
    from rtcxfer.net.signaling.tls import TlsFileError, server_context

    try:
        return server_context(certfile, keyfile)
    except TlsFileError as error:
        raise click.UsageError(str(error)) from None
