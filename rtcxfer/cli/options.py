"""The options several commands share (how to reach the room, the token, the network), and
the objects they turn into."""

from __future__ import annotations

from pathlib import Path

import click


def peer_options(
    ice_servers: tuple[str, ...],
    any_interface: bool,
    ice_username: str | None = None,
    ice_credential_file: Path | None = None,
):
    """The PeerOptions of ``--ice-server``, ``--any-interface``, ``--ice-username`` and
    ``--ice-credential-file`` (the URLs were checked by :func:`check_ice_urls`); a usage error
    for credentials without a TURN URL, a TURN URL without credentials, or one without the other."""
    from rtcxfer.net.peer import PeerOptions
    from rtcxfer.protocol.errors import IceServerError
    from rtcxfer.protocol.ice import IceServer, parse_ice_url

    urls = [parse_ice_url(text) for text in ice_servers]
    turn = [url for url in urls if url.is_turn]
    if (ice_username is None) != (ice_credential_file is None):
        raise click.UsageError("a TURN server's credentials are --ice-username NAME and --ice-credential-file FILE, "
                               "both")
    if ice_username is not None and not turn:
        raise click.UsageError("--ice-username and --ice-credential-file are for a TURN server: give its "
                               "--ice-server turn:HOST[:PORT] too")
    if turn and ice_username is None:
        raise click.UsageError(f"the TURN server {turn[0]} needs credentials: --ice-username NAME and "
                               "--ice-credential-file FILE (a file whose first line is the password)")
    credential = None
    if ice_credential_file is not None:
        from rtcxfer.cli.config import ConfigError, read_secret_file

        try:
            credential = read_secret_file(ice_credential_file, "TURN credential")
        except ConfigError as error:
            raise click.UsageError(str(error)) from None
    servers = []
    try:
        if len(turn) < len(urls):
            servers.append(IceServer([url for url in urls if not url.is_turn]))
        if turn:
            servers.append(IceServer(turn, ice_username, credential))
    except IceServerError as error:
        raise click.UsageError(str(error)) from None
    if servers or any_interface:
        return PeerOptions(loopback_only=False, ice_servers=servers)
    return PeerOptions()


def check_ice_urls(ctx: click.Context, param: click.Parameter, values):
    """A click callback: every value a STUN/TURN URL (a usage error, exit 2, naming the URL and
    what is wrong, otherwise); ``--stun`` only ``stun:`` ones, ``--turn`` only ``turn:``/``turns:``."""
    from rtcxfer.protocol.errors import IceServerError
    from rtcxfer.protocol.ice import parse_ice_url

    for text in values or ():
        try:
            url = parse_ice_url(text)
        except IceServerError as error:
            hint = " (--ice-username NAME, --ice-credential-file FILE)" if "@" in text and param.name == "ice_servers" \
                else ""
            raise click.BadParameter(f"{error}{hint}") from None
        if param.name == "stun" and url.is_turn:
            raise click.BadParameter(f"{str(url)!r} is a TURN URL: give it with --turn")
        if param.name == "turn" and not url.is_turn:
            raise click.BadParameter(f"{str(url)!r} is a STUN URL: give it with --stun")
    return values


# aiortc's own limits, which every ICE option's help must tell.
ICE_LIMITS = (
    "aiortc uses only the first STUN and the first TURN URL, and makes no server-reflexive candidate from a "
    "TURN allocation, so list a stun: beside a turn:."
)

network_options = [
    click.option(
        "--ice-server",
        "ice_servers",
        multiple=True,
        metavar="URL",
        callback=check_ice_urls,
        help="A STUN/TURN server of this peer's own (repeatable): stun:HOST[:PORT], "
        "turn:HOST[:PORT][?transport=udp|tcp], turns:HOST[:PORT]. Tried before those the signaling server "
        f"hands out. Implies --any-interface. {ICE_LIMITS}",
    ),
    click.option(
        "--ice-username",
        default=None,
        metavar="NAME",
        help="The user name for the --ice-server turn: URL(s).",
    ),
    click.option(
        "--ice-credential-file",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        metavar="FILE",
        help="A file whose first line is the password for the --ice-server turn: URL(s).",
    ),
    click.option(
        "--any-interface",
        is_flag=True,
        help="Offer host candidates on every interface. Default: 127.0.0.1 only (same machine), unless the "
        "signaling server hands out STUN/TURN servers or --ice-server gives one.",
    ),
]

tls_options = [
    click.option(
        "--ca-file",
        envvar="RTCXFER_CA_FILE",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        metavar="FILE",
        help="For a wss:// signaling server whose certificate a private CA issued: that CA's certificate (PEM). "
        "Default: the system's trusted CAs [env RTCXFER_CA_FILE].",
    ),
]


def signaling_tls(ca_file: Path | None):
    """The ``ssl.SSLContext`` a peer verifies a ``wss://`` signaling server with (``--ca-file``),
    or None for the system's store; a usage error if the CA file cannot be used."""
    if ca_file is None:
        return None
    from rtcxfer.net.signaling.tls import TlsFileError, client_context

    try:
        return client_context(ca_file)
    except TlsFileError as error:
        raise click.UsageError(str(error)) from None

token_file_option = click.option(
    "--token-file",
    envvar="RTCXFER_TOKEN_FILE",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="A file whose first line is the token: unlike --token, not visible in `ps` [env RTCXFER_TOKEN_FILE].",
)

def websocket_url(url: str) -> str:
    """``url`` as the signaling server's WebSocket address: the address of the web page that
    ``rtcxfer signal`` serves, ``http://HOST:PORT/`` (``https://``), is the same server, so
    it becomes ``ws://HOST:PORT/`` (``wss://``); any other URL is returned as it is."""
    scheme, separator, rest = url.partition("://")
    websocket = {"http": "ws", "https": "wss"}.get(scheme.lower()) if separator else None
    if websocket is None:
        return url
    return f"{websocket}://{rest.partition('#')[0]}"


def convert_signal_urls(ctx: click.Context, param: click.Parameter, value):
    """A click callback for ``--signal`` (one URL, a comma list, or several): each web page address turned
    into its WebSocket address by :func:`websocket_url`, saying so at INFO."""
    if value is None:
        return None
    if isinstance(value, str):
        return ",".join(_converted_signal_url(url.strip()) for url in value.split(","))
    return type(value)(_converted_signal_url(url) for url in value)


def _converted_signal_url(url: str) -> str:
    converted = websocket_url(url)
    if converted != url:
        from rtcxfer.log import logger

        logger.info("--signal {}: that is the web page's address; connecting to the server at {}", url, converted)
    return converted

class SignalUrlsOption(click.Option):
    """``--signal``: repeatable, each value one URL or a comma-separated list, also as one string
    from the configuration file; the command gets them as one comma-separated string."""

    def type_cast_value(self, ctx: click.Context, value):
        return super().type_cast_value(ctx, (value,) if isinstance(value, str) else value)


def join_signal_urls(ctx: click.Context, param: click.Parameter, values) -> str:
    """A click callback: the ``--signal`` values as one comma-separated list, repeats left out,
    each web page address turned into its WebSocket address (:func:`websocket_url`)."""
    from rtcxfer.net.signaling.client import split_signal_urls

    try:
        return ",".join(_converted_signal_url(url) for url in split_signal_urls(values or ()))
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


connection_options = [
    click.option(
        "--signal",
        "signal_url",
        cls=SignalUrlsOption,
        multiple=True,
        envvar="RTCXFER_SIGNAL_URL",
        default=("ws://127.0.0.1:8765",),
        show_default=True,
        callback=join_signal_urls,
        help="Signaling server URL: ws://HOST:PORT, wss:// with TLS (the web page's http:// or https:// "
        "address works too); several (repeated, or comma-separated) for replicas that share their rooms "
        "(rtcxfer signal --redis): the first that answers is used [env RTCXFER_SIGNAL_URL].",
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
