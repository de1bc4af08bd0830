"""The configuration file (``rtcxfer.toml``) and the token file (``rtcxfer.cli.config``)."""

from __future__ import annotations

import pytest

from rtcxfer.cli import config

COMMANDS = {
    "submit": [("signal", "signal_url"), ("room", "room"), ("token-file", "token_file")],
    "worker": [("signal", "signal_url"), ("room", "room"), ("peer-id", "peer_id")],
}


def test_config_top_level_keys_apply_to_every_command_and_tables_to_one(tmp_path):
    data = {"signal": "ws://h:1", "room": "lab", "worker": {"room": "gpu", "peer_id": "w1"}}
    defaults = config.default_map(data, COMMANDS, tmp_path / "rtcxfer.toml")
    assert defaults == {
        "submit": {"signal_url": "ws://h:1", "room": "lab"},
        "worker": {"signal_url": "ws://h:1", "room": "gpu", "peer_id": "w1"},
    }


def test_config_refuses_unknown_keys_naming_the_file(tmp_path):
    with pytest.raises(config.ConfigError, match="unknown setting 'sginal'"):
        config.default_map({"sginal": "x"}, COMMANDS, tmp_path / "rtcxfer.toml")
    with pytest.raises(config.ConfigError, match=r"\[worker\] has no setting 'token-file'"):
        config.default_map({"worker": {"token-file": "x"}}, COMMANDS, tmp_path / "rtcxfer.toml")


def test_config_is_found_in_the_working_directory_before_the_user_directory(tmp_path):
    home = tmp_path / "xdg"
    (home / "rtcxfer").mkdir(parents=True)
    (home / "rtcxfer" / "rtcxfer.toml").write_text('room = "home"\n')
    candidates = config.config_candidates(tmp_path, {"XDG_CONFIG_HOME": str(home)})
    assert candidates == [tmp_path / "rtcxfer.toml", home / "rtcxfer" / "rtcxfer.toml"]


def test_token_file_first_line_and_its_errors(tmp_path):
    path = tmp_path / "token"
    path.write_text("  s3cret-token  \nsecond line\n")
    assert config.read_token_file(path) == "s3cret-token"
    path.write_text("\n")
    with pytest.raises(config.ConfigError, match="empty"):
        config.read_token_file(path)
    with pytest.raises(config.ConfigError, match="cannot read"):
        config.read_token_file(tmp_path / "missing")
