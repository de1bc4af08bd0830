// rtcxfer control frames (TYPE::field::field) and binary chunk headers, as docs/protocol.md
// describes them: schema-driven decoding where at most one field per type is "greedy" (may
// hold "::"), fields before it split from the left, fields after it from the right, and a frame
// is accepted only in its canonical form.

export const SEPARATOR = "::";
export const MAX_FRAME_CHARS = 65536;
export const MAX_ECHO_CHARS = 200;
export const CHUNK_HEADER_SIZE = 27;
const CHUNK_MAGIC = [0x52, 0x58, 0x01]; // "RX", version 1

const TOKEN = /^[A-Za-z0-9._,+=@-]{1,128}$/;
const INT = /^(0|[1-9][0-9]{0,19})$/;
const FLOAT = /^[0-9][0-9.e+-]{0,31}$/;
const HEX = /^[0-9a-f]+$/;
const TOO_LARGE = "too large for this client";

// kind: "token" | "text" | "int" | "float" | "hex32" | "hex64"; "greedy" marks the one field
// that may hold "::"; "optional" fields come last, all together or not at all.
const f = (name, kind, extra = {}) => ({ name, kind, ...extra });
const greedyText = (name) => f(name, "text", { greedy: true });

export const FRAME_TYPES = {
  HELLO: [f("version", "int"), f("client_nonce", "token"), f("transports", "token")],
  AUTH_CHALLENGE: [f("worker_nonce", "hex64")],
  AUTH_PROOF: [f("proof", "hex64")],
  WELCOME: [f("version", "int"), f("transports", "token"), f("worker_proof", "token")],
  AUTH_FAILED: [greedyText("reason")],
  WORKER_BUSY: [greedyText("reason")],
  JOB_SUBMIT: [f("job_id", "token"), f("results_via", "token")],
  JOB_ACCEPTED: [f("job_id", "token")],
  JOB_STATUS: [f("job_id", "token"), f("state", "token")],
  JOB_LOG: [f("job_id", "token"), greedyText("line")],
  JOB_PROGRESS: [f("job_id", "token"), f("done", "int"), f("total", "int")],
  JOB_CANCEL: [f("job_id", "token")],
  JOB_COMPLETE: [
    f("job_id", "token"), greedyText("relative_path"),
    f("file_count", "int", { optional: true }), f("total_mb", "float", { optional: true }),
  ],
  JOB_FAILED: [greedyText("reason")],
  PATH_ERROR: [greedyText("message")],
  PROTOCOL_ERROR: [greedyText("reason")],
  FILE_META: [
    f("transfer_id", "hex32"), greedyText("name"), f("size", "int"), f("sha256", "hex64"),
    f("chunk_size", "int"),
  ],
  FILE_ACCEPT: [f("transfer_id", "hex32"), f("offset", "int")],
  FILE_END: [f("transfer_id", "hex32")],
  FILE_ACK: [f("transfer_id", "hex32"), f("sha256", "hex64")],
  FILE_ERROR: [f("transfer_id", "hex32"), greedyText("reason")],
};

// Reports that are never answered with another error, so two peers cannot bounce errors.
export const ERROR_REPORTS = new Set(["PROTOCOL_ERROR", "FILE_ERROR", "PATH_ERROR", "JOB_FAILED"]);

export class FrameError extends Error {}

// Python's repr() of a float: the shortest round-trip digits, fixed notation for exponents
// -4..15 with at least one decimal, otherwise d.ddde+XX.
export function pythonFloatRepr(value) {
  if (!Number.isFinite(value)) throw new FrameError(`not a finite number: ${value}`);
  const [mantissa, exponentText] = value.toExponential().split("e");
  const exponent = Number(exponentText);
  const digits = mantissa.replace(".", "").replace("-", "");
  const sign = value < 0 || Object.is(value, -0) ? "-" : "";
  if (exponent >= -4 && exponent < 16) {
    if (exponent < 0) return `${sign}0.${"0".repeat(-exponent - 1)}${digits}`;
    const whole = digits.slice(0, exponent + 1).padEnd(exponent + 1, "0");
    const fraction = digits.slice(exponent + 1) || "0";
    return `${sign}${whole}.${fraction}`;
  }
  const rest = digits.slice(1);
  const exp = `${exponent < 0 ? "-" : "+"}${String(Math.abs(exponent)).padStart(2, "0")}`;
  return `${sign}${digits[0]}${rest ? "." + rest : ""}e${exp}`;
}

function problemWith(spec, raw) {
  switch (spec.kind) {
    case "text":
      if (spec.greedy) return null;
      if (!raw || raw.includes(SEPARATOR) || raw.startsWith(":") || raw.endsWith(":")) return "not a plain text field";
      return null;
    case "token":
      return TOKEN.test(raw) ? null : "not a token";
    case "int":
      if (!INT.test(raw)) return "not a canonical non-negative integer";
      return Number.isSafeInteger(Number(raw)) ? null : TOO_LARGE;
    case "float":
      if (!FLOAT.test(raw)) return "not a non-negative decimal number";
      return Number.isFinite(Number(raw)) && pythonFloatRepr(Number(raw)) === raw ? null : "not a canonical number";
    case "hex32":
    case "hex64": {
      const length = spec.kind === "hex32" ? 32 : 64;
      return raw.length === length && HEX.test(raw) ? null : `not ${length} lowercase hex digits`;
    }
    default:
      return `unknown field kind ${spec.kind}`;
  }
}

function format(spec, value) {
  const text = spec.kind === "int" ? String(value) : spec.kind === "float" ? pythonFloatRepr(value) : value;
  if (typeof text !== "string") throw new FrameError(`field ${spec.name} needs text`);
  if (spec.kind === "int" && !(Number.isSafeInteger(value) && value >= 0)) {
    throw new FrameError(`field ${spec.name} needs a non-negative integer`);
  }
  const problem = problemWith(spec, text);
  if (problem) throw new FrameError(`field ${spec.name} cannot be written: ${problem}`);
  return text;
}

// Python's str.split(sep, maxsplit) and str.rsplit(sep, maxsplit): JavaScript's limit drops
// the rest instead of keeping it in the last part.
function splitLeft(text, count) {
  const parts = [];
  let rest = text;
  while (parts.length < count) {
    const at = rest.indexOf(SEPARATOR);
    if (at < 0) break;
    parts.push(rest.slice(0, at));
    rest = rest.slice(at + SEPARATOR.length);
  }
  parts.push(rest);
  return parts;
}

function splitRight(text, count) {
  const parts = [];
  let rest = text;
  while (parts.length < count) {
    const at = rest.lastIndexOf(SEPARATOR);
    if (at < 0) break;
    parts.unshift(rest.slice(at + SEPARATOR.length));
    rest = rest.slice(0, at);
  }
  parts.unshift(rest);
  return parts;
}

function splitFields(specs, rest) {
  const greedyAt = specs.findIndex((spec) => spec.greedy);
  if (greedyAt < 0) {
    const parts = rest.split(SEPARATOR);
    return parts.length === specs.length ? parts : null;
  }
  const left = splitLeft(rest, greedyAt);
  if (left.length !== greedyAt + 1) return null;
  const rightCount = specs.length - greedyAt - 1;
  const right = splitRight(left[greedyAt], rightCount);
  if (right.length !== rightCount + 1) return null;
  return [...left.slice(0, greedyAt), ...right];
}

/** A printable excerpt of peer text, short enough to quote in an error reply. */
export function quoteForReply(text) {
  const excerpt = Array.from(text.slice(0, MAX_ECHO_CHARS), (ch) => (ch !== " " && /[\p{C}\p{Z}]/u.test(ch) ? "?" : ch)).join("");
  return excerpt + (text.length > MAX_ECHO_CHARS ? "..." : "");
}

/** Encode a frame: encodeFrame("FILE_ACK", {transfer_id, sha256}). */
export function encodeFrame(type, values = {}) {
  const specs = FRAME_TYPES[type];
  if (!specs) throw new FrameError(`unknown frame type ${type}`);
  const present = specs.filter((spec) => !spec.optional || values[spec.name] !== undefined);
  const wire = [type, ...present.map((spec) => format(spec, values[spec.name]))].join(SEPARATOR);
  if (wire.length > MAX_FRAME_CHARS) throw new FrameError(`${type} frame is too long`);
  return wire;
}

/** Decode one text message into {type, ...fields}; throws FrameError for anything else. */
export function decodeFrame(message) {
  if (typeof message !== "string") throw new FrameError("a binary message is never a control frame");
  if (message.length > MAX_FRAME_CHARS) throw new FrameError(`frame longer than ${MAX_FRAME_CHARS} characters`);
  const at = message.indexOf(SEPARATOR);
  const type = at < 0 ? message : message.slice(0, at);
  const specs = Object.hasOwn(FRAME_TYPES, type) ? FRAME_TYPES[type] : null;
  if (!specs) throw new FrameError(`unknown frame type: ${quoteForReply(type)}`);
  if (at < 0) throw new FrameError(`${type} needs fields`);
  const rest = message.slice(at + SEPARATOR.length);
  const required = specs.filter((spec) => !spec.optional).length;
  let lastProblem = null;
  // The long form (with the optional fields) is preferred whenever its fields parse.
  for (const count of new Set([specs.length, required])) {
    const raw = splitFields(specs.slice(0, count), rest);
    if (!raw) continue;
    const problems = raw.map((text, index) => problemWith(specs[index], text));
    const bad = problems.findIndex((problem) => problem !== null && problem !== TOO_LARGE);
    const large = problems.indexOf(TOO_LARGE);
    // A form that parses but for a number the page cannot hold exactly is refused outright,
    // never read another way.
    if (bad < 0 && large >= 0) throw new FrameError(`${type}: field ${specs[large].name}: ${TOO_LARGE}`);
    if (bad >= 0) {
      lastProblem = `field ${specs[bad].name}: ${problems[bad]}`;
      continue;
    }
    const frame = { type };
    raw.forEach((text, index) => {
      const kind = specs[index].kind;
      frame[specs[index].name] = kind === "int" || kind === "float" ? Number(text) : text;
    });
    if (encodeFrame(type, frame) !== message) throw new FrameError(`${type} is not in canonical form`);
    return frame;
  }
  throw new FrameError(lastProblem ? `${type}: ${lastProblem}` : `${type} has the wrong number of fields`);
}

export function bytesToHex(bytes) {
  return Array.from(bytes, (byte) => byte.toString(16).padStart(2, "0")).join("");
}

export function hexToBytes(hex) {
  const bytes = new Uint8Array(hex.length / 2);
  for (let i = 0; i < bytes.length; i += 1) bytes[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return bytes;
}

/** The 27-byte header of a chunk: magic, 16-byte transfer id, big-endian 64-bit offset. */
export function chunkHeader(transferIdBytes, offset) {
  const header = new Uint8Array(CHUNK_HEADER_SIZE);
  header.set(CHUNK_MAGIC, 0);
  header.set(transferIdBytes, 3);
  new DataView(header.buffer).setBigUint64(19, BigInt(offset), false);
  return header;
}

/** {transferId, offset, payload} of a binary message, or null if it is not an rtcxfer chunk. */
export function parseChunk(buffer) {
  const bytes = new Uint8Array(buffer);
  if (bytes.length <= CHUNK_HEADER_SIZE || CHUNK_MAGIC.some((value, i) => bytes[i] !== value)) return null;
  const offset = new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(19, false);
  if (offset > BigInt(Number.MAX_SAFE_INTEGER)) return null;
  return {
    transferId: bytesToHex(bytes.subarray(3, 19)),
    offset: Number(offset),
    payload: bytes.subarray(CHUNK_HEADER_SIZE),
  };
}

/** A random id of `bytes` bytes, as lowercase hex. */
export function randomHex(bytes) {
  return bytesToHex(crypto.getRandomValues(new Uint8Array(bytes)));
}
