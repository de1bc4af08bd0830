// rtcxfer control frames (TYPE::field::field) and binary chunk headers, as docs/protocol.md
// describes them: schema-driven decoding where at most one field per type is "greedy" (may
// hold "::"), fields before it split from the left, fields after it from the right, and a frame
// is accepted only in its canonical form.
//
// The schema is not written here: it is protocol.json next to this page, generated from the
// Python frame definitions (python -m rtcxfer.web.protocol_table) and loaded once, when this
// module is first imported, so every module that imports this one can use it at once.

// The shape of protocol.json this code reads (its "table_format").
const TABLE_FORMAT = 1;

function frozen(value) {
  if (value && typeof value === "object") {
    Object.values(value).forEach(frozen);
    Object.freeze(value);
  }
  return value;
}

async function loadProtocolTable() {
  const url = new URL("./protocol.json", import.meta.url);
  const response = await fetch(url, { cache: "no-store" });
  if (!response.ok) throw new Error(`could not load the protocol table ${url.pathname}: HTTP ${response.status}`);
  const table = await response.json();
  if (table.table_format !== TABLE_FORMAT) {
    throw new Error(`the protocol table has format ${table.table_format}; this page reads format ${TABLE_FORMAT}`);
  }
  return frozen(table);
}

/** The protocol table (protocol.json): version, limits, field kinds, chunk header, frame types. */
export const PROTOCOL = await loadProtocolTable();
export const SEPARATOR = PROTOCOL.separator;
export const MAX_FRAME_CHARS = PROTOCOL.max_frame_chars;
export const MAX_ECHO_CHARS = PROTOCOL.max_echo_chars;
/** {TYPE: {fields: [{name, kind, length, greedy, optional}, ...]}}, fields in wire order. */
export const FRAME_TYPES = PROTOCOL.frame_types;
// Reports that are never answered with another error, so two peers cannot bounce errors.
export const ERROR_REPORTS = new Set(PROTOCOL.error_reports);

const fullMatch = (pattern) => new RegExp(`^(?:${pattern})$`);
const TOKEN = fullMatch(PROTOCOL.field_kinds.token.pattern);
const INT = fullMatch(PROTOCOL.field_kinds.int.pattern);
const FLOAT = fullMatch(PROTOCOL.field_kinds.float.pattern);
const HEX_ALPHABET = PROTOCOL.field_kinds.hex.alphabet;
const TOO_LARGE = "too large for this client";

// The chunk header: where each of its fields lies.
export const CHUNK_HEADER_SIZE = PROTOCOL.chunk_header.size;
const CHUNK_MAGIC = hexToBytes(PROTOCOL.chunk_header.magic);
const HEADER = Object.fromEntries(PROTOCOL.chunk_header.fields.map((field) => [field.name, field]));
const LITTLE_ENDIAN = PROTOCOL.chunk_header.byte_order === "little";
if (HEADER.magic?.size !== CHUNK_MAGIC.length || HEADER.transfer_id?.size !== 16
    || HEADER.offset?.size !== 8 || HEADER.offset.kind !== "uint") {
  throw new Error("the protocol table's chunk header is not one this page can read");
}

/** The fields of frame type `type` in wire order, or null for a type this page does not know. */
function fieldsOf(type) {
  return Object.hasOwn(FRAME_TYPES, type) ? FRAME_TYPES[type].fields : null;
}

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
    case "hex":
      return raw.length === spec.length && Array.from(raw).every((ch) => HEX_ALPHABET.includes(ch))
        ? null : `not ${spec.length} lowercase hex digits`;
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
  const specs = fieldsOf(type);
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
  const specs = fieldsOf(type);
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

/** The header of a chunk (magic, 16-byte transfer id, 64-bit offset), laid out as the table says. */
export function chunkHeader(transferIdBytes, offset) {
  const header = new Uint8Array(CHUNK_HEADER_SIZE);
  header.set(CHUNK_MAGIC, HEADER.magic.offset);
  header.set(transferIdBytes, HEADER.transfer_id.offset);
  new DataView(header.buffer).setBigUint64(HEADER.offset.offset, BigInt(offset), LITTLE_ENDIAN);
  return header;
}

/** {transferId, offset, payload} of a binary message, or null if it is not an rtcxfer chunk. */
export function parseChunk(buffer) {
  const bytes = new Uint8Array(buffer);
  const magicAt = HEADER.magic.offset;
  if (bytes.length <= CHUNK_HEADER_SIZE || CHUNK_MAGIC.some((value, i) => bytes[magicAt + i] !== value)) return null;
  const offset = new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(HEADER.offset.offset, LITTLE_ENDIAN);
  if (offset > BigInt(Number.MAX_SAFE_INTEGER)) return null;
  const idAt = HEADER.transfer_id.offset;
  return {
    transferId: bytesToHex(bytes.subarray(idAt, idAt + HEADER.transfer_id.size)),
    offset: Number(offset),
    payload: bytes.subarray(CHUNK_HEADER_SIZE),
  };
}

/** A random id of `bytes` bytes, as lowercase hex. */
export function randomHex(bytes) {
  return bytesToHex(crypto.getRandomValues(new Uint8Array(bytes)));
}
