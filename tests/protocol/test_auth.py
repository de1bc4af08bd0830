"""The proofs of the authentication handshake (``rtcxfer.protocol.auth``), sans-IO."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from rtcxfer.protocol import auth

TRANSCRIPT_FIELDS = st.tuples(*(st.text(max_size=80) for _ in range(5)))


@given(TRANSCRIPT_FIELDS, st.integers(0, 4), st.text(min_size=1, max_size=20))
def test_auth_proofs_depend_on_every_field_and_roles_never_mix(fields, index, change):
    transcript = auth.Transcript(*fields)
    altered = list(fields)
    altered[index] = altered[index] + change
    other = auth.Transcript(*altered)
    proof = auth.client_proof("token", transcript)
    assert proof != auth.client_proof("token", other)
    assert proof != auth.client_proof("token2", transcript)
    assert proof != auth.worker_proof("token", transcript, "")
    assert auth.proofs_match(proof, auth.client_proof("token", transcript))
