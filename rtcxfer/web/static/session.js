// One rtcxfer session with a worker over an open FrameChannel (docs/protocol.md sections 3 and
// 6): HELLO / WELCOME, then jobs whose package goes by rtc-chunked and whose results come back
// the same way, one FILE_META per result file.

import { NO_PROOF, clientProof, proofsMatch, workerProof } from "./auth.js";
import { randomHex } from "./frames.js";
import { RtcChunked, TRANSPORT, safeUploadName } from "./transfer.js";

// The version this page's code speaks (its authentication is section 3.1's), not read from
// protocol.json: a new version needs new code here. A browser test holds the two equal.
export const PROTOCOL_VERSION = 2;

export class AuthError extends Error {}
export class SessionError extends Error {}

export class WorkerSession {
  constructor(channel, { onPeerError = () => {} } = {}) {
    this.channel = channel;
    this.transfer = new RtcChunked(channel, {
      onFile: (file) => this.job?.results.push(file),
      onIncoming: (meta) => this.job?.handlers.onResultStarted?.(meta),
      onIncomingProgress: (meta, bytes) => this.job?.handlers.onResultProgress?.(meta, bytes),
    });
    this.waiter = null; // {types, resolve}: the next frame of one of `types` settles it
    this.job = null;
    channel.onPeerError = onPeerError;
    channel.onFrame = (frame) => this.receive(frame);
    channel.onChunk = (chunk) => this.transfer.handleChunk(chunk);
    channel.closed.then(() => this.ended(new SessionError("the connection to the worker closed")));
  }

  receive(frame) {
    if (this.transfer.handleFrame(frame)) return;
    if (this.waiter && this.waiter.types.includes(frame.type)) {
      const { resolve } = this.waiter;
      this.waiter = null;
      resolve(frame);
      return;
    }
    const job = this.job;
    switch (frame.type) {
      case "JOB_STATUS":
        if (job && frame.job_id === job.id) job.handlers.onStatus?.(frame.state);
        return;
      case "JOB_LOG":
        if (job && frame.job_id === job.id) job.handlers.onLog?.(frame.line);
        return;
      case "JOB_PROGRESS":
        if (job && frame.job_id === job.id) job.handlers.onProgress?.(frame.done, frame.total);
        return;
      case "JOB_COMPLETE":
        if (job && frame.job_id === job.id) job.settle({ ok: true, fileCount: frame.file_count, totalMb: frame.total_mb });
        return;
      case "JOB_FAILED":
        job?.settle({ ok: false, reason: frame.reason });
        return;
      case "PATH_ERROR":
        job?.settle({ ok: false, reason: frame.message });
        return;
      case "AUTH_FAILED":
        this.ended(new AuthError(frame.reason));
        return;
      case "PROTOCOL_ERROR":
        this.channel.onPeerError(`the worker reports a protocol error: ${frame.reason}`);
        return;
      default:
        this.channel.reply("PROTOCOL_ERROR", { reason: `no handler for ${frame.type} frames in this session` });
    }
  }

  ended(error) {
    if (this.waiter) {
      const { reject } = this.waiter;
      this.waiter = null;
      reject(error);
    }
    this.job?.fail(error);
  }

  next(types) {
    return new Promise((resolve, reject) => {
      this.waiter = { types, resolve, reject };
    });
  }

  /**
   * Authenticate (rtcxfer/auth.py): HELLO with our nonce, the worker's AUTH_CHALLENGE, our
   * AUTH_PROOF, then WELCOME with the worker's proof, checked before anything else is sent.
   * Throws AuthError if the worker refuses us or cannot prove it knows the token.
   */
  async hello(token) {
    const clientNonce = randomHex(32);
    const challenge = this.next(["AUTH_CHALLENGE", "AUTH_FAILED"]);
    this.channel.send("HELLO", { version: PROTOCOL_VERSION, client_nonce: clientNonce, transports: TRANSPORT });
    const reply = await challenge;
    if (reply.type === "AUTH_FAILED") throw new AuthError(reply.reason);
    const { local, remote } = this.channel.fingerprints();
    const transcript = {
      clientNonce, workerNonce: reply.worker_nonce, clientFingerprint: local, workerFingerprint: remote,
      clientTransports: TRANSPORT,
    };
    const welcome = this.next(["WELCOME", "AUTH_FAILED", "WORKER_BUSY"]);
    // Without a token the proof is made with an empty key: only a worker run without one accepts it.
    this.channel.send("AUTH_PROOF", { proof: clientProof(token || "", transcript) });
    const frame = await welcome;
    if (frame.type === "AUTH_FAILED") throw new AuthError(frame.reason);
    if (frame.type === "WORKER_BUSY") throw new SessionError(`the worker is busy: ${frame.reason}`);
    if (frame.version !== PROTOCOL_VERSION) {
      throw new SessionError(`the worker speaks protocol version ${frame.version}, this page ${PROTOCOL_VERSION}`);
    }
    if (frame.worker_proof === NO_PROOF) {
      if (token) {
        throw new AuthError("the worker runs without a token, so it cannot prove it is the worker you meant; nothing was sent to it");
      }
    } else if (!token || !proofsMatch(workerProof(token, transcript, frame.transports), frame.worker_proof)) {
      throw new AuthError("the peer posing as the worker could not prove it knows the token (an impostor, or a relay in between); nothing was sent to it");
    }
    if (!frame.transports.split(",").includes(TRANSPORT)) {
      throw new SessionError(`the worker does not offer ${TRANSPORT} (it offers ${frame.transports})`);
    }
  }

  /**
   * Run `file` (a File or Blob) as a job. handlers: onHashProgress(done, total),
   * onUploadProgress(done, total), onUploaded(), onStatus(state), onLog(line),
   * onProgress(done, total), onResultStarted(meta), onResultProgress(meta, bytes).
   * Resolves to {ok, jobId, reason?, results: [{name, size, sha256, blob}], fileCount, totalMb}.
   */
  async runJob(file, handlers = {}) {
    if (this.job) throw new SessionError("a job is already running in this session");
    const id = `job-${randomHex(4)}`;
    let settle;
    let fail;
    const outcome = new Promise((resolve, reject) => {
      settle = resolve;
      fail = reject;
    });
    outcome.catch(() => {}); // awaited below unless the submission itself fails
    this.job = { id, handlers, results: [], settle, fail };
    try {
      const accepted = this.next(["JOB_ACCEPTED", "JOB_FAILED", "PROTOCOL_ERROR"]);
      this.channel.send("JOB_SUBMIT", { job_id: id, results_via: TRANSPORT });
      const reply = await accepted;
      if (reply.type !== "JOB_ACCEPTED") throw new SessionError(reply.reason);
      const upload = this.transfer.send(file, safeUploadName(file.name || "package.zip"), {
        onProgress: handlers.onUploadProgress,
        onHashProgress: handlers.onHashProgress,
      });
      upload.catch(() => {}); // after an early refusal nobody awaits the upload any more
      // The worker may refuse the job while the package is still on its way.
      const first = await Promise.race([upload.then(() => null), outcome]);
      if (first !== null) return { jobId: id, results: this.job.results, ...first };
      handlers.onUploaded?.();
      const result = await outcome;
      const { results } = this.job;
      if (result.ok && result.fileCount !== undefined && result.fileCount !== results.length) {
        return {
          jobId: id, results, ok: false,
          reason: `the worker reported ${result.fileCount} result files, but ${results.length} arrived`,
        };
      }
      return { jobId: id, results, ...result };
    } finally {
      this.job = null;
    }
  }

  /** Ask the worker to stop the running job (it reports JOB_FAILED ... was cancelled). */
  cancel() {
    if (this.job && this.channel.isOpen) this.channel.send("JOB_CANCEL", { job_id: this.job.id });
  }

  close() {
    this.channel.close();
  }
}
