"""Issue 15, the parts that need no network: package checks and packing (points 7, 11), the
configuration file and token file (point 10), progress output (point 5), kept partials for a
resume (point 4)."""

from __future__ import annotations

import io
import json
import os
import time
import zipfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rtcxfer.cli import config
from rtcxfer.cli.progress import ProgressDisplay, format_size, transfer_record
from rtcxfer.client.packing import PackageError, check_package, pack_directory
from rtcxfer.client.rtc_client import ClientEvent
from rtcxfer.client.sample import build_sample_package
from rtcxfer.files import kept_partials as resume
from rtcxfer.files.receiving import part_name
from rtcxfer.transport.base import TransportContext

# --- point 7: the package is checked on the client --------------------------------------


def bad_packages(directory: Path) -> dict[str, tuple[Path, str]]:
    """Files that are not job packages, each with a word its refusal must contain."""
    good = build_sample_package(directory / "good.zip")
    random_bytes = directory / "corrupt.zip"
    random_bytes.write_bytes(os.urandom(4096))
    truncated = directory / "truncated.zip"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = directory / "notes.txt"
    text.write_text("just text\n")
    no_manifest = directory / "no-manifest.zip"
    with zipfile.ZipFile(no_manifest, "w") as archive:
        archive.writestr("main.py", "print(1)\n")
    bad_manifest = directory / "bad-manifest.zip"
    with zipfile.ZipFile(bad_manifest, "w") as archive:
        archive.writestr("rtcxfer.json", json.dumps({"command": []}))
    not_json = directory / "not-json.zip"
    with zipfile.ZipFile(not_json, "w") as archive:
        archive.writestr("rtcxfer.json", "{command: python")
    return {
        "random bytes": (random_bytes, "not a ZIP"),
        "truncated": (truncated, "not a ZIP"),
        "text": (text, "not a ZIP"),
        "no manifest": (no_manifest, "no rtcxfer.json"),
        "bad manifest": (bad_manifest, "command must be"),
        "not JSON": (not_json, "not valid JSON"),
    }


def test_check_package_refuses_each_kind_of_non_package_with_its_reason(tmp_path):
    for kind, (path, reason) in bad_packages(tmp_path).items():
        with pytest.raises(PackageError, match=reason):
            check_package(path)
        assert kind


def test_check_package_reads_a_good_manifest(tmp_path):
    manifest = check_package(build_sample_package(tmp_path / "ok.zip"))
    assert manifest.command == ("python", "job.py")


@given(st.binary(max_size=2048))
def test_check_package_never_raises_anything_but_package_error(data):
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"rtcxfer-hypothesis-{os.getpid()}.zip"
    try:
        path.write_bytes(data)
        try:
            check_package(path)
        except PackageError:
            pass
    finally:
        path.unlink(missing_ok=True)


# --- point 11: a directory becomes a package --------------------------------------------


def make_job_directory(directory: Path) -> Path:
    (directory / "sub").mkdir(parents=True)
    (directory / "rtcxfer.json").write_text(json.dumps({"command": ["python", "job.py"]}))
    (directory / "job.py").write_text("print('hi')\n")
    (directory / "sub" / "data.bin").write_bytes(os.urandom(10_000))
    return directory


def test_pack_directory_is_deterministic_and_holds_every_file(tmp_path):
    source = make_job_directory(tmp_path / "job")
    first = pack_directory(source, tmp_path / "a" / "job.zip")
    time.sleep(0.01)
    os.utime(source / "job.py")  # a new mtime must not change the bytes (the resume key)
    second = pack_directory(source, tmp_path / "b" / "job.zip")
    assert first.read_bytes() == second.read_bytes()
    with zipfile.ZipFile(first) as archive:
        assert sorted(archive.namelist()) == ["job.py", "rtcxfer.json", "sub/data.bin"]
        assert archive.read("sub/data.bin") == (source / "sub" / "data.bin").read_bytes()


def test_pack_directory_refuses_a_directory_without_manifest_and_links(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "x.txt").write_text("x")
    with pytest.raises(PackageError, match="without rtcxfer.json"):
        pack_directory(plain, tmp_path / "plain.zip")
    linked = make_job_directory(tmp_path / "linked")
    (linked / "escape").symlink_to("/etc/passwd")
    with pytest.raises(PackageError, match="link"):
        pack_directory(linked, tmp_path / "linked.zip")


# --- point 10: configuration file and token file -----------------------------------------

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


# --- point 5: progress ---------------------------------------------------------------------


def transfer(name: str, done: int, total: int, direction: str = "up", transport: str = "rtc-chunked") -> ClientEvent:
    data = {"name": name, "done": done, "total": total, "transport": transport, "direction": direction}
    return ClientEvent("transfer", None, data)


def test_plain_output_when_not_a_terminal_has_no_carriage_return_and_leaves_a_record():
    stream = io.StringIO()
    display = ProgressDisplay(stream=stream, interactive=False)
    mib = 1024 * 1024
    for done in (0, mib, 5 * mib):
        display.handle(transfer("data.zip", done, 5 * mib))
    display.handle(transfer("tiny.txt", 10, 10, direction="down", transport="a-third-party-one"))
    for done in (0, 3, 10):
        display.handle(ClientEvent("progress", "job-1", {"done": done, "total": 10}))
    display.close()
    text = stream.getvalue()
    assert "\r" not in text
    assert "-> data.zip via rtc-chunked: 5.0 MiB" in text
    assert "sent data.zip via rtc-chunked: 5.0 MiB in " in text and "MiB/s)" in text
    assert "received tiny.txt via a-third-party-one: 10 B in " in text
    assert "[job-1] progress 10/10" in text
    assert "step/s" not in text and "MB/s" not in text


def test_terminal_bars_reach_100_percent_and_the_job_bar_has_no_rate():
    stream = io.StringIO()
    display = ProgressDisplay(stream=stream, interactive=True)
    display.handle(transfer("small.bin", 0, 100))
    display.handle(transfer("small.bin", 100, 100))
    for done in (1, 5, 10):
        display.handle(ClientEvent("progress", "job-1", {"done": done, "total": 10}))
    display.close()
    frames = stream.getvalue()
    assert "100%" in frames
    assert "sent small.bin via rtc-chunked: 100 B in " in frames
    assert "10/10" in frames
    assert "step/s" not in frames and "it/s" not in frames


def test_sizes_and_rates_are_in_binary_units():
    assert format_size(0) == "0 B"
    assert format_size(1023) == "1023 B"
    assert format_size(1024) == "1.0 KiB"
    assert format_size(200 * 1024 * 1024) == "200.0 MiB"
    assert transfer_record("down", "r.bin", "s3", 100 * 1024 * 1024, 2.0).endswith("(50.0 MiB/s)")


def test_a_transport_gets_progress_from_its_context_without_being_known_by_name(tmp_path):
    calls = []
    context = TransportContext(role="client", incoming_dir=tmp_path, progress=lambda *call: calls.append(call))
    report = context.progress_reporter("my-own-transport")
    report("file.bin", 5, 10)
    assert calls == [("my-own-transport", "file.bin", 5, 10)]
    own = []
    context.options["my-own-transport"] = {"progress": lambda *call: own.append(call)}
    context.progress_reporter("my-own-transport")("file.bin", 10, 10)
    assert own == [("file.bin", 10, 10)] and len(calls) == 1


# --- point 4: kept partials -----------------------------------------------------------------


def test_partials_are_kept_for_a_resume_and_pruned_by_age_and_size(tmp_path):
    incoming = tmp_path / "job" / "incoming"
    incoming.mkdir(parents=True)
    kept = tmp_path / "kept"
    names = [part_name(f"p{n}.zip", f"{n:032x}") for n in range(3)]
    for n, name in enumerate(names):
        (incoming / name).write_bytes(b"x" * (1000 * (n + 1)))
    (incoming / "finished.zip").write_bytes(b"done")  # not a partial: not kept
    assert resume.keep_partials(incoming, kept) == 3
    assert sorted(p.name for p in kept.iterdir()) == sorted(names)
    now = time.time()
    os.utime(kept / names[0], (now - 10, now - 10))
    os.utime(kept / names[1], (now - 5, now - 5))
    # 6000 bytes kept; at most 5500: the oldest goes.
    assert resume.prune(kept, max_bytes=5500, now=now) == 1
    assert not (kept / names[0]).exists()
    assert resume.prune(kept, max_age=1, now=now + 100) == 2
    assert not kept.exists(), "an empty kept-partials directory is removed"
