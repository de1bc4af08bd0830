// The signaling connection: a WebSocket to the server that served this page (same host and
// port), JSON messages as docs/protocol.md section 1 describes them. The server may hand out
// STUN and TURN servers (TURN with credentials made for this page's peer id, renewed while
// connected): `iceServers` holds the latest, as RTCPeerConnection takes them.

export class SignalingError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

const ID = /^[A-Za-z0-9._:@+=-]{1,128}$/;
const ROLES = new Set(["worker", "client"]);

export function isPeerId(value) {
  return typeof value === "string" && ID.test(value);
}

/** ws:// (or wss://) of the server that served this page. */
export function signalingUrlOfPage() {
  return `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/`;
}

export class Signaling {
  /** Connect and register; resolves once the server answered `registered`. */
  static connect(url, { room, token, role = "client", peerId }) {
    const signaling = new Signaling(url, room, role, peerId);
    return signaling.register(token).then(() => signaling);
  }

  constructor(url, room, role, peerId) {
    this.url = url;
    this.room = room;
    this.role = role;
    this.peerId = peerId;
    /** The other peers of the room: peer id -> role, in join order. */
    this.peers = new Map();
    /** What each worker said about itself (state, slots, running...): peer id -> object. */
    this.descriptions = new Map();
    /** RTCIceServer objects from the server ({urls, username, credential}); [] if it has none. */
    this.iceServers = [];
    this.onPeers = () => {};
    this.onRelay = () => {};
    this.onLeft = () => {};
    this.onError = () => {};
    this.onClose = () => {};
    this.closed = false;
  }

  register(token) {
    return new Promise((resolve, reject) => {
      let registered = false;
      const fail = (error) => {
        if (!registered) reject(error);
      };
      try {
        this.socket = new WebSocket(this.url);
      } catch (error) {
        reject(new SignalingError("unreachable", `cannot reach the signaling server at ${this.url}: ${error.message}`));
        return;
      }
      this.socket.addEventListener("open", () => {
        const message = { type: "register", room: this.room, role: this.role, peer_id: this.peerId };
        if (token) message.token = token;
        this.socket.send(JSON.stringify(message));
      });
      this.socket.addEventListener("message", (event) => {
        const message = parse(event.data);
        if (message === null) return;
        if (message.type === "registered" && !registered) {
          registered = true;
          this.iceServers = iceServers(message.ice_servers);
          for (const peer of message.peers) {
            this.peers.set(peer.peer_id, peer.role);
            this.remember(peer);
          }
          this.onPeers(this.peers);
          resolve();
        } else if (message.type === "error") {
          const error = new SignalingError(message.code, message.message);
          if (registered) this.onError(error);
          else fail(error);
        } else if (message.type === "peer-joined") {
          this.peers.set(message.peer_id, message.role);
          this.remember(message);
          this.onPeers(this.peers, { joined: message.peer_id });
        } else if (message.type === "peer-updated") {
          if (this.peers.has(message.peer_id)) {
            this.remember(message);
            this.onPeers(this.peers, { updated: message.peer_id });
          }
        } else if (message.type === "peer-left") {
          this.peers.delete(message.peer_id);
          this.descriptions.delete(message.peer_id);
          this.onPeers(this.peers, { left: message.peer_id });
          this.onLeft(message.peer_id);
        } else if (message.type === "relay") {
          this.onRelay(message.from, message.payload);
        } else if (message.type === "ice-servers") {
          this.iceServers = iceServers(message.ice_servers);
        }
      });
      this.socket.addEventListener("close", (event) => {
        this.closed = true;
        fail(new SignalingError("closed", `the signaling server at ${this.url} closed the connection (code ${event.code})`));
        this.onClose(event);
      });
      this.socket.addEventListener("error", () => {
        fail(new SignalingError("unreachable", `cannot reach the signaling server at ${this.url}`));
      });
    });
  }

  remember(peer) {
    const description = peer.description;
    if (peer.role === "worker" && description && typeof description === "object" && !Array.isArray(description)) {
      this.descriptions.set(peer.peer_id, description);
    }
  }

  /** "idle, 0/2 slots" for a worker that described itself, else "". */
  workerState(peerId) {
    const d = this.descriptions.get(peerId);
    if (!d || !["idle", "busy", "draining"].includes(d.state)) return "";
    const slots = Number.isInteger(d.slots) && Number.isInteger(d.running) ? `, ${d.running}/${d.slots} slots` : "";
    return `${d.state}${slots}`;
  }

  /** The worker peer ids of the room, in join order. */
  workers() {
    return [...this.peers].filter(([, role]) => role === "worker").map(([peerId]) => peerId);
  }

  relay(to, payload) {
    if (this.closed) throw new SignalingError("closed", "the signaling connection is closed");
    this.socket.send(JSON.stringify({ type: "relay", to, payload }));
  }

  close() {
    if (this.socket && !this.closed) this.socket.close(1000);
    this.closed = true;
  }
}

// The RTCIceServer entries the browser can take (stun:, turn:, turns: URLs; TURN with a username
// and a credential, which RTCPeerConnection otherwise refuses); anything else is left out.
const ICE_URL = /^(stun|turn|turns):[^\s@]{1,500}$/i;

function iceServers(list) {
  if (!Array.isArray(list)) return [];
  const servers = [];
  for (const entry of list.slice(0, 16)) {
    if (!entry || typeof entry !== "object") continue;
    const urls = (typeof entry.urls === "string" ? [entry.urls] : Array.isArray(entry.urls) ? entry.urls : [])
      .filter((url) => typeof url === "string" && ICE_URL.test(url));
    const isTurn = urls.some((url) => /^turns?:/i.test(url));
    const credentialed = typeof entry.username === "string" && typeof entry.credential === "string";
    if (urls.length === 0 || (isTurn && !credentialed)) continue;
    servers.push(credentialed ? { urls, username: entry.username, credential: entry.credential } : { urls });
  }
  return servers;
}

// Server messages are checked for the fields used here; anything else is ignored.
function parse(data) {
  if (typeof data !== "string") return null;
  let message;
  try {
    message = JSON.parse(data);
  } catch {
    return null;
  }
  if (message === null || typeof message !== "object" || Array.isArray(message)) return null;
  switch (message.type) {
    case "registered":
      return Array.isArray(message.peers) && message.peers.every((p) => p && isPeerId(p.peer_id) && ROLES.has(p.role))
        ? message : null;
    case "peer-joined":
    case "peer-updated":
    case "peer-left":
      return isPeerId(message.peer_id) && ROLES.has(message.role) ? message : null;
    case "relay":
      return isPeerId(message.from) && message.payload && typeof message.payload === "object" ? message : null;
    case "ice-servers":
      return message;
    case "error":
      return typeof message.code === "string"
        ? { ...message, message: typeof message.message === "string" ? message.message : message.code } : null;
    default:
      return null;
  }
}
