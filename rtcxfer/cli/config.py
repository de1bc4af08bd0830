"""Settings for the ``rtcxfer`` command from a file, and the token from a file.

Precedence, highest first: a flag on the command line, then its environment variable
(``RTCXFER_*``), then the configuration file, then the built-in default.

The file is the first of: ``--config FILE`` (or ``RTCXFER_CONFIG``), ``./rtcxfer.toml``,
``$XDG_CONFIG_HOME/rtcxfer/rtcxfer.toml`` (``~/.config/rtcxfer/rtcxfer.toml``). Keys are the
long option names without dashes (``signal``, ``room``, ``token-file``, ``shared-root``...);
top-level keys apply to every command that has the option, a table such as ``[submit]`` or
``[worker]`` to that command only::

    signal = "ws://gpu-gateway:8765"
    room = "lab"
    token-file = "~/.config/rtcxfer/token"

    [worker]
    work-dir = "/scratch/rtcxfer"

A token given in a file keeps it out of ``ps`` and shell history: ``--token-file`` (or
``token-file`` in the configuration) names a file whose first line is the token.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

FILE_NAME = "rtcxfer.toml"
CONFIG_ENV = "RTCXFER_CONFIG"


class ConfigError(Exception):
    """The configuration file or the token file cannot be used; the message says why."""


def config_candidates(cwd: Path | None = None, environ: Mapping[str, str] = os.environ) -> list[Path]:
    """Where a configuration file is looked for, in order (the first that exists is used)."""
    config_home = environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return [(cwd or Path.cwd()) / FILE_NAME, Path(config_home) / "rtcxfer" / FILE_NAME]


def find_config(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ConfigError(f"configuration file {path} does not exist")
        return path
    return next((path for path in config_candidates() if path.is_file()), None)


def load_config(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except OSError as error:
        raise ConfigError(f"cannot read configuration file {path}: {error.strerror or error}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"configuration file {path} is not valid TOML: {error}") from None


def default_map(data: Mapping[str, Any], commands: Mapping[str, Iterable[tuple[str, str]]], path: Path) -> dict:
    """click's ``default_map`` for ``data`` (a loaded file).

    ``commands`` maps each command's name to its options as ``(long name without dashes,
    parameter name)`` pairs. A key no command knows is an error, so a typo is not ignored.
    """
    options = {command: dict(pairs) for command, pairs in commands.items()}
    known_anywhere = {key for pairs in options.values() for key in pairs}
    result: dict[str, dict[str, Any]] = {command: {} for command in options}
    for key, value in data.items():
        if isinstance(value, dict) and key in options:
            continue
        key = key.replace("_", "-")
        if key not in known_anywhere:
            raise ConfigError(f"{path}: unknown setting {key!r} (known: {', '.join(sorted(known_anywhere))})")
        for command, names in options.items():
            if key in names:
                result[command][names[key]] = _as_default(value)
    for command, table in data.items():
        if not (isinstance(table, dict) and command in options):
            continue
        for key, value in table.items():
            key = key.replace("_", "-")
            if key not in options[command]:
                raise ConfigError(
                    f"{path}: [{command}] has no setting {key!r} (known: {', '.join(sorted(options[command]))})"
                )
            result[command][options[command][key]] = _as_default(value)
    return {command: values for command, values in result.items() if values}


def _as_default(value: Any) -> Any:
    return os.path.expanduser(value) if isinstance(value, str) and value.startswith("~") else value


def read_token_file(path: str | os.PathLike[str]) -> str:
    """The token in the first line of ``path`` (surrounding white space removed)."""
    return read_secret_file(path, "token")


def read_secret_file(path: str | os.PathLike[str], what: str) -> str:
    """The secret (a token, a TURN secret or password: ``what``) in the first line of ``path``,
    surrounding white space removed; :class:`ConfigError` saying why if there is none."""
    path = Path(path).expanduser()
    try:
        with open(path, encoding="utf-8") as handle:
            secret = handle.readline().strip()
    except OSError as error:
        raise ConfigError(f"cannot read the {what} file {path}: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"the {what} file {path} is not UTF-8 text") from None
    if not secret:
        raise ConfigError(f"the {what} file {path} is empty: its first line must hold the {what}")
    return secret


def resolve_token(ctx, token: str | None, token_file: str | os.PathLike[str] | None) -> str | None:
    """The token from ``--token`` or ``--token-file``, whichever was given at the higher level
    of precedence (flag, environment, file); both at the same level is a usage error."""
    import click
    from click.core import ParameterSource

    rank = {ParameterSource.COMMANDLINE: 3, ParameterSource.ENVIRONMENT: 2, ParameterSource.DEFAULT_MAP: 1}
    token_rank = rank.get(ctx.get_parameter_source("token"), 0) if token else -1
    file_rank = rank.get(ctx.get_parameter_source("token_file"), 0) if token_file else -1
    if token_file and token and token_rank == file_rank:
        raise click.UsageError("give the token once: --token or --token-file, not both")
    if token_file and file_rank > token_rank:
        try:
            return read_token_file(token_file)
        except ConfigError as error:
            raise click.UsageError(str(error)) from None
    return token or None
