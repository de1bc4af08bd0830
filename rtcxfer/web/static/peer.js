// The WebRTC side: one peer connection and its data channel labelled "rtcxfer", set up through
// the signaling relay with one offer and one answer carrying every candidate (no trickle ICE).
// `iceServers` are those the signaling server handed out (Signaling.iceServers): with a TURN
// server the browser gathers a relay candidate too, so it reaches a worker behind any NAT.

import { onlySha256Fingerprints, sdpFingerprint } from "./auth.js";
import { ERROR_REPORTS, FrameError, decodeFrame, encodeFrame, parseChunk } from "./frames.js";

export const CHANNEL_LABEL = "rtcxfer";
// Backpressure: pause above HIGH_WATERMARK queued bytes until the queue drains to LOW_WATERMARK.
export const HIGH_WATERMARK = 4 * 1024 * 1024;
export const LOW_WATERMARK = 1024 * 1024;
const GATHER_MS = 5000;
const HANDSHAKE_MS = 30000;

export class ConnectionError extends Error {}

function timeout(ms, what) {
  let timer;
  const promise = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new ConnectionError(`${what} did not happen within ${ms / 1000} s`)), ms);
  });
  return { promise, cancel: () => clearTimeout(timer) };
}

async function within(ms, what, promise) {
  const limit = timeout(ms, what);
  try {
    return await Promise.race([promise, limit.promise]);
  } finally {
    limit.cancel();
  }
}

// Every candidate goes into the description; a network whose mDNS never answers must not hang
// us, so gathering is cut off after GATHER_MS with whatever was found.
function gathered(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, GATHER_MS);
    pc.addEventListener("icegatheringstatechange", () => {
      if (pc.iceGatheringState === "complete") {
        clearTimeout(timer);
        resolve();
      }
    });
  });
}

function opened(dc) {
  if (dc.readyState === "open") return Promise.resolve(dc);
  return new Promise((resolve, reject) => {
    dc.addEventListener("open", () => resolve(dc), { once: true });
    dc.addEventListener("close", () => reject(new ConnectionError("the data channel closed before it opened")), { once: true });
  });
}

/** As the client: offer to `peerId`, wait for its answer and the open channel. */
export async function offerChannel(signaling, peerId, { iceServers = [] } = {}) {
  const pc = new RTCPeerConnection({ iceServers });
  try {
    const dc = pc.createDataChannel(CHANNEL_LABEL, { ordered: true });
    const channel = new FrameChannel(pc, dc);
    await pc.setLocalDescription(await pc.createOffer());
    await gathered(pc);
    const answer = new Promise((resolve, reject) => {
      signaling.onRelay = (from, payload) => {
        if (from === peerId && payload.kind === "answer" && typeof payload.sdp === "string") resolve(payload.sdp);
      };
      signaling.onLeft = (left) => {
        if (left === peerId) reject(new ConnectionError(`${peerId} left the room`));
      };
      signaling.onError = (error) => {
        if (error.code === "unknown-peer") reject(new ConnectionError(`${peerId} is no longer in the room`));
      };
    });
    signaling.relay(peerId, { kind: "offer", sdp: pc.localDescription.sdp });
    const sdp = onlySha256Fingerprints(await within(HANDSHAKE_MS, `an answer from ${peerId}`, answer));
    await pc.setRemoteDescription({ type: "answer", sdp });
    await within(HANDSHAKE_MS, `the connection to ${peerId}`, opened(dc));
    return channel;
  } catch (error) {
    pc.close();
    throw error;
  }
}

/** As the answering side (used by the interoperability tests): answer `offerSdp` from `peerId`. */
export async function answerChannel(signaling, peerId, offerSdp, { iceServers = [] } = {}) {
  const pc = new RTCPeerConnection({ iceServers });
  try {
    const incoming = new Promise((resolve) => {
      pc.addEventListener("datachannel", (event) => resolve(new FrameChannel(pc, event.channel)));
    });
    await pc.setRemoteDescription({ type: "offer", sdp: onlySha256Fingerprints(offerSdp) });
    await pc.setLocalDescription(await pc.createAnswer());
    await gathered(pc);
    signaling.relay(peerId, { kind: "answer", sdp: pc.localDescription.sdp });
    const channel = await within(HANDSHAKE_MS, `a data channel from ${peerId}`, incoming);
    await within(HANDSHAKE_MS, `the connection to ${peerId}`, opened(channel.dc));
    return channel;
  } catch (error) {
    pc.close();
    throw error;
  }
}

/** A data channel that speaks frames: decodes what arrives, encodes what leaves, with backpressure. */
export class FrameChannel {
  constructor(pc, dc) {
    this.pc = pc;
    this.dc = dc;
    dc.binaryType = "arraybuffer";
    dc.bufferedAmountLowThreshold = LOW_WATERMARK;
    this.onFrame = () => {};
    this.onChunk = () => {};
    this.onPeerError = () => {};
    // Attached at once: a handler added later would miss the first messages.
    dc.addEventListener("message", (event) => this.receive(event.data));
    this.closed = new Promise((resolve) => {
      dc.addEventListener("close", () => resolve(), { once: true });
      pc.addEventListener("connectionstatechange", () => {
        if (["failed", "closed"].includes(pc.connectionState)) resolve();
      });
    });
  }

  get isOpen() {
    return this.dc.readyState === "open";
  }

  /** SHA-256 DTLS fingerprints {local, remote} from the two session descriptions. */
  fingerprints() {
    return {
      local: sdpFingerprint(this.pc.localDescription?.sdp),
      remote: sdpFingerprint(this.pc.currentRemoteDescription?.sdp),
    };
  }

  /** The largest message the peer accepts (its SDP a=max-message-size). */
  get maxMessageSize() {
    return this.pc.sctp?.maxMessageSize || 65536;
  }

  receive(data) {
    if (typeof data === "string") {
      let frame;
      try {
        frame = decodeFrame(data);
      } catch (error) {
        if (!(error instanceof FrameError)) throw error;
        this.onPeerError(error.message);
        if (!ERROR_REPORTS.has(data.split("::", 1)[0])) this.reply("PROTOCOL_ERROR", { reason: error.message });
        return;
      }
      this.onFrame(frame);
      return;
    }
    const chunk = parseChunk(data);
    if (chunk === null) {
      this.reply("PROTOCOL_ERROR", { reason: "binary message is not an rtcxfer chunk" });
      return;
    }
    this.onChunk(chunk);
  }

  // An answer to the peer's message: lost without harm if the channel closed meanwhile.
  reply(type, values) {
    if (this.isOpen) this.send(type, values);
  }

  send(type, values) {
    if (!this.isOpen) throw new ConnectionError("the connection to the worker is closed");
    this.dc.send(encodeFrame(type, values));
  }

  async sendBytes(bytes) {
    // No event can fire between this check and adding the listener: one JavaScript turn.
    while (this.dc.bufferedAmount > HIGH_WATERMARK) {
      await new Promise((resolve, reject) => {
        this.dc.addEventListener("bufferedamountlow", resolve, { once: true });
        this.closed.then(() => reject(new ConnectionError("the connection closed while sending")));
      });
    }
    if (!this.isOpen) throw new ConnectionError("the connection closed while sending");
    this.dc.send(bytes);
  }

  close() {
    this.dc.close();
    this.pc.close();
  }
}
