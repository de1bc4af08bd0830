"""The TURN credentials the signaling server hands out are what a real coturn accepts: coturn
(Debian's ``turnserver`` 4.6) started on 127.0.0.1 with a shared secret allocates a relay, over
UDP and over TCP, for the credential a peer got in ``registered``, and refuses expired, forged
and borrowed ones. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import pytest

from rtcxfer.net.signaling import SignalingClient, SignalingServer
from rtcxfer.protocol.ice import MAX_TURN_EXPIRY, IceServerConfig, turn_rest_credential
from rtcxfer.testing import run_async
from tests.support.turn_server import LOOPBACK, allocate, coturn, turnserver_problem

pytestmark = [pytest.mark.slow, pytest.mark.skipif(turnserver_problem() is not None, reason=str(turnserver_problem()))]

SECRET = f"coturn-{secrets.token_hex(12)}"
GUARD = 60.0


def test_credentials_from_the_signaling_server_allocate_a_relay_and_bad_ones_are_refused(tmp_path: Path, logs):
    with coturn(tmp_path / "turn", SECRET) as turn:
        config = IceServerConfig(stun=[turn.stun_url], turn=[turn.turn_url("udp"), turn.turn_url("tcp")],
                                 turn_secret=SECRET, turn_ttl=600)

        async def scenario() -> dict[str, object]:
            async with SignalingServer(LOOPBACK, 0, {"lab": "t"}, ice_servers=config) as server:
                async with SignalingClient(server.url, "lab", "client", "client-1", "t") as client:
                    _, handed_out = client.ice_servers
            username, password = handed_out.username, handed_out.credential
            now = time.time()
            expired = turn_rest_credential(SECRET, "client-1", ttl=60, now=now - 3600)
            forged = turn_rest_credential("not-" + SECRET, "client-1", ttl=600, now=now)
            # Another peer's name with client-1's password: the name is part of what is signed.
            borrowed = username.split(":")[0] + ":client-2"
            last_second = turn_rest_credential(SECRET, "w", ttl=MAX_TURN_EXPIRY - int(now), now=now)
            return {
                "udp": await allocate(turn, "udp", username, password),
                "tcp": await allocate(turn, "tcp", username, password),
                "expired": await allocate(turn, "udp", expired.username, expired.password),
                "forged": await allocate(turn, "tcp", forged.username, forged.password),
                "borrowed": await allocate(turn, "udp", borrowed, password),
                "2**31 - 1": await allocate(turn, "udp", last_second.username, last_second.password),
                "2**31": await allocate(turn, "udp", *_credential_expiring_at(2**31, "w")),
                "secret": password,
            }

        outcome = run_async(scenario(), GUARD)
        for transport in ("udp", "tcp"):
            allocation = outcome[transport]
            assert allocation.relayed is not None and allocation.relayed[0] == LOOPBACK, (transport, turn.log())
        for refused in ("expired", "forged", "borrowed"):
            assert outcome[refused].error_code == 401, (refused, outcome[refused])
        # Where the limit of turn_rest_credential comes from: coturn takes 2**31 - 1, not 2**31.
        assert outcome["2**31 - 1"].relayed is not None
        assert outcome["2**31"].error_code == 401
        text = "\n".join(message for _, message in logs)
        assert SECRET not in text and outcome["secret"] not in text


def _credential_expiring_at(expiry: int, name: str) -> tuple[str, str]:
    """What turn_rest_credential refuses to make: the same computation, for a given expiry."""
    import base64
    import hashlib
    import hmac

    username = f"{expiry}:{name}"
    return username, base64.b64encode(hmac.new(SECRET.encode(), username.encode(), hashlib.sha1).digest()).decode()
