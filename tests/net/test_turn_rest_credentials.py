"""The NAT bed's TURN REST credentials (``rtcxfer.testing.nat_bed.turn_rest_credentials``): what
coturn's ``use-auth-secret`` expects, and no expiry coturn would refuse."""

from __future__ import annotations

import pytest

from rtcxfer.testing.nat_bed import turn_rest_credentials


def test_username_is_expiry_and_name_and_password_the_hmac_of_it():
    # printf '%s' 1700000000:alice | openssl dgst -sha1 -hmac secret -binary | base64
    assert turn_rest_credentials("secret", "alice", 1_700_000_000) == (
        "1700000000:alice",
        "d8soP47RbdIKLDUOpnJPVQyq5Ts=",
    )


@pytest.mark.parametrize("expires", [0, -5, 2**31, 2**40])
def test_an_expiry_coturn_would_refuse_is_an_error(expires):
    with pytest.raises(ValueError, match=r"2\*\*31"):
        turn_rest_credentials("secret", "alice", expires)
