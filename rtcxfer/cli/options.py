"""The options several commands share (how to reach the room, the token, the network), and
the objects they turn into."""

from __future__ import annotations

from pathlib import Path

import click


def peer_options(ice_servers: tuple[str, ...], any_interface: bool):
    from rtcxfer.net.peer import PeerOptions

    if ice_servers or any_interface:
        return PeerOptions(loopback_only=False, ice_servers=ice_servers)
    return PeerOptions()


network_options = [
    click.option(
        "--ice-server",
        "ice_servers",
        multiple=True,
        metavar="URL",
        help="A STUN/TURN server (repeatable). Implies --any-interface. None by default.",
    ),
    click.option(
        "--any-interface",
        is_flag=True,
        help="Offer host candidates on every interface. Default: 127.0.0.1 only (same machine).",
    ),
]

token_file_option = click.option(
    "--token-file",
    envvar="RTCXFER_TOKEN_FILE",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="A file whose first line is the token: unlike --token, not visible in `ps` [env RTCXFER_TOKEN_FILE].",
)

connection_options = [
    click.option(
        "--signal",
        "signal_url",
        envvar="RTCXFER_SIGNAL_URL",
        default="ws://127.0.0.1:8765",
        show_default=True,
        help="Signaling server URL [env RTCXFER_SIGNAL_URL].",
    ),
    click.option(
        "--room",
        envvar="RTCXFER_ROOM",
        default="default",
        show_default=True,
        help="Room shared by the worker and its clients [env RTCXFER_ROOM].",
    ),
    click.option(
        "--token",
        envvar="RTCXFER_TOKEN",
        default=None,
        help="The worker's token; it never leaves this machine (see README, Security) [env RTCXFER_TOKEN].",
    ),
    token_file_option,
    click.option(
        "--signal-token",
        envvar="RTCXFER_SIGNAL_TOKEN",
        default=None,
        help="The signaling server's token (rtcxfer signal --token), if it differs from --token; "
        "only an HMAC of it is sent [env RTCXFER_SIGNAL_TOKEN].",
    ),
    click.option(
        "--shared-root",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Shared storage root on this machine (default: $SHARED_STORAGE_ROOT or a known mount).",
    ),
]


def room_token(secret: str | None) -> str | None:
    """What goes to the signaling server for ``secret``: an HMAC, never the secret itself."""
    from rtcxfer.protocol.auth import signaling_token

    return signaling_token(secret) if secret else None


def apply_options(options):
    """Decorate a command with a list of shared click options, in order."""

    def decorate(function):
        for option in reversed(options):
            function = option(function)
        return function

    return decorate


def limit_option(flag: str, kind: click.ParamType, default: float, help: str):
    """An option bounding what peers or jobs may cost, its default shown in ``--help``."""
    return click.option(flag, type=kind, default=default, show_default=True, help=help)
