"""The ``rtcxfer`` command: the group that holds every command (one module each), the global
options, and the configuration file's defaults."""

from __future__ import annotations

from pathlib import Path

import click

from rtcxfer import __version__, log
from rtcxfer.cli.demo import demo
from rtcxfer.cli.doctor import doctor
from rtcxfer.cli.plugins import plugins
from rtcxfer.cli.signal_server import signal_server
from rtcxfer.cli.submit import submit
from rtcxfer.cli.worker import worker
from rtcxfer.cli.workers import workers


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rtcxfer")
@click.option(
    "--config",
    "config_file",
    envvar="RTCXFER_CONFIG",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Settings file (default: ./rtcxfer.toml, else ~/.config/rtcxfer/rtcxfer.toml). Flags beat "
    "environment variables, which beat the file [env RTCXFER_CONFIG].",
)
@click.option(
    "--log-level",
    default="WARNING",
    show_default=True,
    envvar="RTCXFER_LOG_LEVEL",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    help="How much rtcxfer logs to stderr [env RTCXFER_LOG_LEVEL].",
)
@click.pass_context
def main(ctx: click.Context, config_file: Path | None, log_level: str) -> None:
    """Send a job to a remote worker over WebRTC and get its results back.

    Files travel by the best transport both peers offer: a shared filesystem (shared-fs), a
    TLS connection straight between the two machines (direct), chunks over the data channel
    (rtc-chunked), or any transport plugin you install (`rtcxfer plugins` lists them). Start
    with `rtcxfer demo`.
    """
    log.enable(log_level)
    ctx.default_map = _config_defaults(ctx, config_file)


def _config_defaults(ctx: click.Context, config_file: Path | None) -> dict | None:
    """click's defaults from the configuration file (see :mod:`rtcxfer.cli.config`)."""
    from rtcxfer.cli import config

    try:
        path = config.find_config(config_file)
        if path is None:
            return None
        assert isinstance(ctx.command, click.Group)
        commands = {
            name: [
                (option.opts[-1].lstrip("-"), option.name)
                for option in command.params
                if isinstance(option, click.Option) and option.opts[-1].startswith("--") and option.name != "help"
            ]
            for name, command in ctx.command.commands.items()
        }
        defaults = config.default_map(config.load_config(path), commands, path)
        invoked = ctx.command.commands.get(ctx.invoked_subcommand or "")
        if invoked is not None:
            _check_values(ctx, invoked, defaults.get(invoked.name, {}), path)
        return defaults
    except config.ConfigError as error:
        raise click.UsageError(str(error)) from None


def _check_values(ctx: click.Context, command: click.Command, values: dict, path: Path) -> None:
    """Each of ``values`` (the configuration's defaults for ``command``) converted as its option
    would convert it, so that a bad one is reported naming the file and the key, not as if it
    had been typed on the command line."""
    from rtcxfer.cli import config

    for option in command.params:
        if option.name not in values or not isinstance(option, click.Option):
            continue
        try:
            option.type_cast_value(ctx, values[option.name])
        except click.BadParameter as error:
            key = option.opts[-1].lstrip("-")
            raise config.ConfigError(
                f"{path}: bad value for {key!r}: {error.message}"
            ) from None


for command in (signal_server, worker, submit, workers, plugins, doctor, demo):
    main.add_command(command)
