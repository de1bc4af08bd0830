// Incremental SHA-256 (FIPS 180-4). WebCrypto only digests a whole buffer at once, which would
// hold a multi-gigabyte package or result in memory; this hashes as the bytes stream through.
// Checked against Python's hashlib by the browser tests (tests/web/test_web_client.py).

const K = new Uint32Array([
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
]);

const INITIAL = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];

export class Sha256 {
  constructor() {
    this.state = new Uint32Array(INITIAL);
    this.pending = new Uint8Array(64); // bytes of an incomplete block
    this.pendingLength = 0;
    this.length = 0; // bytes hashed so far
    this.words = new Uint32Array(64);
    this.finished = false;
  }

  /** Add bytes (a Uint8Array); returns this. */
  update(bytes) {
    if (this.finished) throw new Error("Sha256: update after digest");
    this.length += bytes.length;
    let offset = 0;
    if (this.pendingLength > 0) {
      const take = Math.min(64 - this.pendingLength, bytes.length);
      this.pending.set(bytes.subarray(0, take), this.pendingLength);
      this.pendingLength += take;
      offset = take;
      if (this.pendingLength < 64) return this;
      this.compress(this.pending, 0);
      this.pendingLength = 0;
    }
    for (; offset + 64 <= bytes.length; offset += 64) this.compress(bytes, offset);
    if (offset < bytes.length) {
      this.pending.set(bytes.subarray(offset), 0);
      this.pendingLength = bytes.length - offset;
    }
    return this;
  }

  /** The digest as 64 lowercase hex digits; the hash cannot be updated afterwards. */
  hexDigest() {
    const bits = this.length * 8;
    const block = this.pending;
    block.fill(0, this.pendingLength);
    block[this.pendingLength] = 0x80;
    if (this.pendingLength >= 56) {
      this.compress(block, 0);
      block.fill(0);
    }
    const view = new DataView(block.buffer, block.byteOffset, 64);
    view.setUint32(56, Math.floor(bits / 0x100000000), false);
    view.setUint32(60, bits >>> 0, false);
    this.compress(block, 0);
    this.finished = true;
    return Array.from(this.state, (word) => word.toString(16).padStart(8, "0")).join("");
  }

  compress(bytes, offset) {
    const w = this.words;
    for (let i = 0; i < 16; i += 1) {
      const at = offset + 4 * i;
      w[i] = (bytes[at] << 24) | (bytes[at + 1] << 16) | (bytes[at + 2] << 8) | bytes[at + 3];
    }
    for (let i = 16; i < 64; i += 1) {
      const x = w[i - 15];
      const y = w[i - 2];
      const s0 = ((x >>> 7) | (x << 25)) ^ ((x >>> 18) | (x << 14)) ^ (x >>> 3);
      const s1 = ((y >>> 17) | (y << 15)) ^ ((y >>> 19) | (y << 13)) ^ (y >>> 10);
      w[i] = (w[i - 16] + s0 + w[i - 7] + s1) | 0;
    }
    const h = this.state;
    let a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
    for (let i = 0; i < 64; i += 1) {
      const S1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7));
      const ch = (e & f) ^ (~e & g);
      const t1 = (k + S1 + ch + K[i] + w[i]) | 0;
      const S0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10));
      const maj = (a & b) ^ (a & c) ^ (b & c);
      const t2 = (S0 + maj) | 0;
      k = g; g = f; f = e; e = (d + t1) | 0;
      d = c; c = b; b = a; a = (t1 + t2) | 0;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += k;
  }
}

/** The SHA-256 of a Blob (a File), read in slices so the whole file is never in memory. */
export async function sha256OfBlob(blob, onProgress = () => {}, sliceBytes = 4 * 1024 * 1024) {
  const hash = new Sha256();
  for (let offset = 0; offset < blob.size; offset += sliceBytes) {
    hash.update(new Uint8Array(await blob.slice(offset, offset + sliceBytes).arrayBuffer()));
    onProgress(Math.min(blob.size, offset + sliceBytes), blob.size);
  }
  return hash.hexDigest();
}

const BLOCK_BYTES = 64;

/**
 * HMAC-SHA256 (RFC 2104) of `message` under `key` (both Uint8Array), as lowercase hex.
 * Our own rather than WebCrypto's: crypto.subtle exists only in secure contexts, and this page
 * is often opened as plain http://host:port/ of a signaling server on the local network.
 */
export function hmacSha256Hex(key, message) {
  let block = key;
  if (block.length > BLOCK_BYTES) block = hexToBytes(new Sha256().update(block).hexDigest());
  const padded = new Uint8Array(BLOCK_BYTES);
  padded.set(block);
  const inner = new Sha256().update(padded.map((byte) => byte ^ 0x36)).update(message);
  const innerDigest = hexToBytes(inner.hexDigest());
  return new Sha256().update(padded.map((byte) => byte ^ 0x5c)).update(innerDigest).hexDigest();
}

function hexToBytes(hex) {
  return Uint8Array.from(hex.match(/../g), (pair) => parseInt(pair, 16));
}
