// Mutual challenge-response authentication (the token never crosses the wire), as
// rtcxfer/auth.py defines it: each side proves the worker's token with an HMAC-SHA256 over a
// length-prefixed transcript of both nonces, both DTLS certificate fingerprints and the
// announced transports, so a proof is good for this one session between these two peers only.

import { hmacSha256Hex } from "./sha256.js";

export const LABEL = "rtcxfer-auth-v2";
export const NO_PROOF = "none";
const encoder = new TextEncoder();

/**
 * `sdp` with only its SHA-256 fingerprint lines. aiortc announces sha-256, sha-384 and sha-512;
 * Chromium checks the peer's certificate against one of them, and the proofs bind the SHA-256
 * one: keeping only that line makes the fingerprint Chromium checks the one the proofs cover.
 */
export function onlySha256Fingerprints(sdp) {
  return sdp.replace(/^a=fingerprint:(?!sha-256 ).*(\r?\n|$)/gim, "");
}

/** The SHA-256 DTLS fingerprint an SDP announces ("AB:CD:..."), or "" if it has none. */
export function sdpFingerprint(sdp) {
  const match = /^a=fingerprint:sha-256 ([0-9A-Fa-f:]+)\s*$/im.exec(sdp || "");
  return match ? match[1].toUpperCase() : "";
}

function transcriptMessage(transcript, role, extra = []) {
  const fields = [
    role, transcript.clientNonce, transcript.workerNonce, transcript.clientFingerprint,
    transcript.workerFingerprint, transcript.clientTransports, ...extra,
  ].map((field) => encoder.encode(field));
  const label = encoder.encode(LABEL);
  const total = label.length + fields.reduce((sum, field) => sum + 4 + field.length, 0);
  const message = new Uint8Array(total);
  const view = new DataView(message.buffer);
  message.set(label, 0);
  let at = label.length;
  for (const field of fields) {
    view.setUint32(at, field.length, false);
    message.set(field, at + 4);
    at += 4 + field.length;
  }
  return message;
}

/**
 * What is presented to the signaling server for a room secret, as `rtcxfer` does: an HMAC of
 * it, so the secret (by default also the worker's token) never reaches the server.
 */
export function signalingToken(secret) {
  return hmacSha256Hex(encoder.encode(secret), encoder.encode(`${LABEL}/signaling`));
}

/** The client's proof that it knows `token` (64 hex digits). */
export function clientProof(token, transcript) {
  return hmacSha256Hex(encoder.encode(token), transcriptMessage(transcript, "client"));
}

/** The proof a worker that knows `token` sends in WELCOME. */
export function workerProof(token, transcript, workerTransports) {
  return hmacSha256Hex(encoder.encode(token), transcriptMessage(transcript, "worker", [workerTransports]));
}

/** Equality that takes the same time wherever the texts differ. */
export function proofsMatch(expected, received) {
  if (expected.length !== received.length) return false;
  let difference = 0;
  for (let i = 0; i < expected.length; i += 1) difference |= expected.charCodeAt(i) ^ received.charCodeAt(i);
  return difference === 0;
}
