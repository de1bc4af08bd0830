// The rtc-chunked transport in the browser (docs/protocol.md section 5): FILE_META, FILE_ACCEPT,
// binary chunks with the 27-byte header, FILE_END, FILE_ACK, each file checked by SHA-256.

import { CHUNK_HEADER_SIZE, chunkHeader, hexToBytes, randomHex } from "./frames.js";
import { Sha256, sha256OfBlob } from "./sha256.js";

export const TRANSPORT = "rtc-chunked";
export const DEFAULT_CHUNK_SIZE = 262144 - CHUNK_HEADER_SIZE;  // one 256 KiB message (as rtcxfer sends)
export const MAX_CHUNK_SIZE = 256 * 1024;
export const MAX_OPEN_TRANSFERS = 16;
const READ_BYTES = 1024 * 1024;

export class TransferError extends Error {}

function deferred() {
  let resolve;
  let reject;
  const promise = new Promise((res, rej) => {
    resolve = res;
    reject = rej;
  });
  promise.catch(() => {}); // rejections are seen by whoever awaits it, or by nobody
  return { promise, resolve, reject };
}

const DRIVE_OR_SCHEME = /^[A-Za-z][A-Za-z0-9+.-]*:/;
const PARTIAL_FILE = /^\..*\.[0-9a-f]{32}\.part$/s;

/** Why `name` (a peer's file name) is not a safe relative path, or null if it is. */
export function problemWithName(name) {
  if (!name) return "empty name";
  if (/[\u0000-\u001f\u007f\\]/.test(name)) return "control character or backslash in name";
  if (name.startsWith("/") || DRIVE_OR_SCHEME.test(name)) return "absolute name";
  const parts = name.split("/");
  if (parts.some((part) => part === "" || part === "." || part === "..")) return "empty, '.' or '..' component";
  if (PARTIAL_FILE.test(parts[parts.length - 1])) return "name shaped like a partial file";
  return null;
}

/** A name the worker accepts for a local file: its own name, tamed. */
export function safeUploadName(name) {
  const tamed = name.replace(/[^A-Za-z0-9._-]/g, "_").replace(/^[._]+/, "");
  return tamed || "package.zip";
}

export class RtcChunked {
  /**
   * channel: a FrameChannel. onFile({name, size, sha256, blob}) is called for each verified
   * incoming file; onIncoming(meta) when one is announced; onIncomingProgress(meta, bytes).
   */
  constructor(channel, { maxFileBytes = 8 * 1024 ** 3, onFile = () => {}, onIncoming = () => {}, onIncomingProgress = () => {} } = {}) {
    this.channel = channel;
    this.maxFileBytes = maxFileBytes;
    this.onFile = onFile;
    this.onIncoming = onIncoming;
    this.onIncomingProgress = onIncomingProgress;
    this.outgoing = new Map();
    this.incoming = new Map();
  }

  /** True if the frame belongs to this transport (and was handled). */
  handleFrame(frame) {
    switch (frame.type) {
      case "FILE_META":
        this.announce(frame);
        return true;
      case "FILE_ACCEPT":
        this.outgoing.get(frame.transfer_id)?.accepted.resolve(frame.offset);
        return true;
      case "FILE_ACK":
        this.outgoing.get(frame.transfer_id)?.acked.resolve(frame.sha256);
        return true;
      case "FILE_END":
        this.finish(frame.transfer_id);
        return true;
      case "FILE_ERROR":
        this.peerFailed(frame.transfer_id, frame.reason);
        return true;
      default:
        return false;
    }
  }

  /** Send `blob` as `name`; resolves once the receiver acknowledged the right SHA-256. */
  async send(blob, name, { onProgress = () => {}, onHashProgress = () => {}, sha256 } = {}) {
    const digest = sha256 ?? (await sha256OfBlob(blob, onHashProgress));
    const transferId = randomHex(16);
    const chunkSize = Math.min(DEFAULT_CHUNK_SIZE, this.channel.maxMessageSize - CHUNK_HEADER_SIZE);
    const state = { accepted: deferred(), acked: deferred(), failure: null };
    this.outgoing.set(transferId, state);
    try {
      this.channel.send("FILE_META", { transfer_id: transferId, name, size: blob.size, sha256: digest, chunk_size: chunkSize });
      const offset = await Promise.race([state.accepted.promise, this.channel.closed.then(() => {
        throw new TransferError("the connection closed before the transfer was accepted");
      })]);
      if (offset > blob.size) throw new TransferError(`the receiver asked for offset ${offset} of a ${blob.size}-byte file`);
      const id = hexToBytes(transferId);
      onProgress(offset, blob.size);
      for (let position = offset; position < blob.size;) {
        const block = new Uint8Array(await blob.slice(position, position + READ_BYTES).arrayBuffer());
        for (let at = 0; at < block.length; at += chunkSize) {
          if (state.failure) throw state.failure;
          const payload = block.subarray(at, at + chunkSize);
          const message = new Uint8Array(CHUNK_HEADER_SIZE + payload.length);
          message.set(chunkHeader(id, position + at), 0);
          message.set(payload, CHUNK_HEADER_SIZE);
          await this.channel.sendBytes(message);
          onProgress(position + at + payload.length, blob.size);
        }
        position += block.length;
      }
      if (state.failure) throw state.failure;
      this.channel.send("FILE_END", { transfer_id: transferId });
      const acknowledged = await Promise.race([state.acked.promise, this.channel.closed.then(() => {
        throw new TransferError("the connection closed before the receiver confirmed the file");
      })]);
      if (acknowledged !== digest) throw new TransferError(`the receiver confirmed SHA-256 ${acknowledged}, expected ${digest}`);
      return { transferId, sha256: digest };
    } finally {
      this.outgoing.delete(transferId);
    }
  }

  announce(meta) {
    const refuse = (reason) => this.channel.reply("FILE_ERROR", { transfer_id: meta.transfer_id, reason });
    const problem = problemWithName(meta.name);
    if (problem) return refuse(`refused name: ${problem}`);
    if (this.incoming.has(meta.transfer_id)) return refuse("transfer already open");
    if (this.incoming.size >= MAX_OPEN_TRANSFERS) return refuse(`more than ${MAX_OPEN_TRANSFERS} transfers open`);
    if (meta.size > this.maxFileBytes) return refuse(`file larger than ${this.maxFileBytes} bytes`);
    if (meta.chunk_size < 1 || meta.chunk_size > MAX_CHUNK_SIZE) return refuse(`chunk size out of range 1..${MAX_CHUNK_SIZE}`);
    this.incoming.set(meta.transfer_id, { meta, hash: new Sha256(), parts: [], received: 0 });
    this.onIncoming(meta);
    this.channel.reply("FILE_ACCEPT", { transfer_id: meta.transfer_id, offset: 0 });
    return undefined;
  }

  handleChunk(chunk) {
    const transfer = this.incoming.get(chunk.transferId);
    if (!transfer) {
      this.channel.reply("FILE_ERROR", { transfer_id: chunk.transferId, reason: "unknown transfer" });
      return;
    }
    const { meta } = transfer;
    let problem = null;
    if (chunk.offset !== transfer.received) problem = `chunk at offset ${chunk.offset}, expected ${transfer.received}`;
    else if (chunk.payload.length > meta.chunk_size) problem = "chunk longer than the announced chunk size";
    else if (transfer.received + chunk.payload.length > meta.size) problem = "more bytes than the announced size";
    if (problem) {
      this.abandon(meta.transfer_id, problem);
      return;
    }
    transfer.hash.update(chunk.payload);
    transfer.parts.push(chunk.payload);
    transfer.received += chunk.payload.length;
    this.onIncomingProgress(meta, transfer.received);
  }

  finish(transferId) {
    const transfer = this.incoming.get(transferId);
    if (!transfer) {
      this.channel.reply("FILE_ERROR", { transfer_id: transferId, reason: "unknown transfer" });
      return;
    }
    const { meta } = transfer;
    if (transfer.received !== meta.size) {
      this.abandon(transferId, `incomplete: ${transfer.received} of ${meta.size} bytes`);
      return;
    }
    const digest = transfer.hash.hexDigest();
    if (digest !== meta.sha256) {
      this.abandon(transferId, `SHA-256 mismatch: the received bytes hash to ${digest}`);
      return;
    }
    this.incoming.delete(transferId);
    // Only a verified file becomes a Blob the page offers; a partial one is dropped with its parts.
    const file = { name: meta.name, size: meta.size, sha256: digest, blob: new Blob(transfer.parts) };
    this.channel.reply("FILE_ACK", { transfer_id: transferId, sha256: digest });
    this.onFile(file);
  }

  abandon(transferId, reason) {
    this.incoming.delete(transferId);
    this.channel.reply("FILE_ERROR", { transfer_id: transferId, reason });
  }

  peerFailed(transferId, reason) {
    const outgoing = this.outgoing.get(transferId);
    if (outgoing) {
      outgoing.failure = new TransferError(`the receiver abandoned the transfer: ${reason}`);
      outgoing.accepted.reject(outgoing.failure);
      outgoing.acked.reject(outgoing.failure);
    }
    this.incoming.delete(transferId);
  }
}
