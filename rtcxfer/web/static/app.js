// The page: room and token, the room's workers, a package picked or dropped, upload and job
// progress, the job's output, results to download, errors in plain words. Every text that
// comes from a peer is shown with textContent, never parsed as HTML. The token lives in this
// module's memory only (never in storage, the URL or a cookie).

import { signalingToken } from "./auth.js";
import { offerChannel } from "./peer.js";
import { AuthError, WorkerSession } from "./session.js";
import { Signaling, SignalingError, isPeerId, signalingUrlOfPage } from "./signaling.js";
import { randomHex } from "./frames.js";

const MAX_LOG_LINES = 5000;
const $ = (id) => document.getElementById(id);

// token: the worker's; signalToken: the room's (rtcxfer signal --token) where it differs.
const state = { signaling: null, token: "", signalToken: "", file: null, session: null, room: "" };

function setState(name) {
  document.body.dataset.state = name;
  const connected = state.signaling !== null;
  const running = name === "running";
  $("run").disabled = !(connected && state.file && $("worker").value && !running);
  $("cancel").disabled = !running;
  $("connect").disabled = running;
}

function showStatus(text) {
  $("status").textContent = text;
}

function showError(text) {
  $("error").textContent = text;
  $("error").hidden = !text;
}

function percent(done, total) {
  return total > 0 ? Math.min(100, Math.floor((100 * done) / total)) : 100;
}

function setBar(bar, text, done, total, label) {
  const value = percent(done, total);
  $(bar).value = value;
  $(text).textContent = label ?? `${value} %`;
}

function formatBytes(bytes) {
  const units = ["bytes", "KiB", "MiB", "GiB", "TiB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${bytes} bytes` : `${value.toFixed(1)} ${units[unit]}`;
}

function appendLog(line) {
  const log = $("log");
  log.append(document.createTextNode(`${line}\n`));
  while (log.childNodes.length > MAX_LOG_LINES) log.firstChild.remove();
  log.scrollTop = log.scrollHeight;
}

function showWorkers(signaling) {
  const select = $("worker");
  const previous = select.value;
  const workers = signaling.workers();
  select.replaceChildren(...workers.map((peerId) => {
    const option = document.createElement("option");
    option.value = peerId;
    const state = signaling.workerState(peerId);
    option.textContent = state ? `${peerId} (${state})` : peerId;
    return option;
  }));
  if (workers.includes(previous)) select.value = previous;
  select.disabled = workers.length === 0;
  $("room-status").textContent = workers.length === 0
    ? `Connected to room “${signaling.room}”. No worker is in this room yet; waiting for one.`
    : `Connected to room “${signaling.room}”: ${workers.length} worker${workers.length === 1 ? "" : "s"}.`;
  setState(document.body.dataset.state);
}

function describeSignalingError(error, room) {
  switch (error.code) {
    case "bad-token":
      return `The signaling server refused the token for room “${room}”. Check the token and connect again.`;
    case "duplicate-peer":
    case "room-full":
    case "server-full":
      return `The signaling server cannot take this page now: ${error.message}`;
    default:
      return error.message;
  }
}

// Resolves to the open signaling connection of `room`, or throws a SignalingError.
async function openSignaling(room) {
  const secret = state.signalToken || state.token;
  const signaling = await Signaling.connect(signalingUrlOfPage(), {
    room, token: secret ? signalingToken(secret) : undefined, peerId: `client-${randomHex(4)}`,
  });
  state.signaling = signaling;
  signaling.onPeers = () => showWorkers(signaling);
  signaling.onClose = () => {
    if (state.signaling !== signaling) return;
    // The server closes a client that relays nothing for a while (its idle timeout): the
    // worker list is kept, and the next job reconnects with the token still in memory.
    $("room-status").textContent = `Room “${room}”: the signaling connection is closed; running a job reconnects.`;
    setState(document.body.dataset.state);
  };
  showWorkers(signaling);
  return signaling;
}

async function connect(event) {
  event.preventDefault();
  showError("");
  const room = $("room").value.trim();
  if (!isPeerId(room)) {
    showError("A room name uses letters, digits and . _ : @ + = - only (at most 128 characters).");
    return;
  }
  state.signaling?.close();
  state.signaling = null;
  state.token = $("token").value;
  state.signalToken = $("signal-token").value;
  // Out of the form at once: the tokens stay only in this module's memory.
  $("token").value = "";
  $("signal-token").value = "";
  state.room = room;
  $("room-status").textContent = `Connecting to room “${room}”…`;
  try {
    await openSignaling(room);
  } catch (error) {
    if (!(error instanceof SignalingError)) throw error;
    $("room-status").textContent = "Not connected.";
    showError(describeSignalingError(error, room));
    setState("failed");
  }
}

function choose(file) {
  state.file = file;
  $("package-name").textContent = file ? `${file.name} (${formatBytes(file.size)})` : "";
  setState(document.body.dataset.state === "running" ? "running" : "idle");
}

function offerResult(file) {
  const item = document.createElement("li");
  const link = document.createElement("a");
  link.href = URL.createObjectURL(file.blob);
  // A download name cannot hold "/": the browser would change it anyway.
  link.download = file.name.replaceAll("/", "_");
  link.textContent = file.name;
  link.dataset.name = file.name;
  const size = document.createElement("span");
  size.className = "size";
  size.textContent = formatBytes(file.size);
  item.append(link, size);
  $("results").append(item);
}

async function run() {
  const workerId = $("worker").value;
  const file = state.file;
  if (!state.signaling || !workerId || !file) return;
  showError("");
  for (const link of $("results").querySelectorAll("a")) URL.revokeObjectURL(link.href);
  $("results").replaceChildren();
  $("log").replaceChildren();
  setBar("upload-bar", "upload-text", 0, 1);
  setBar("job-bar", "job-text", 0, 1, "");
  setState("running");
  showStatus(`Connecting to ${workerId}…`);
  let session = null;
  try {
    const signaling = state.signaling.closed ? await openSignaling(state.room) : state.signaling;
    const channel = await offerChannel(signaling, workerId, { iceServers: signaling.iceServers });
    session = new WorkerSession(channel, { onPeerError: (text) => appendLog(`[rtcxfer] ${text}`) });
    state.session = session;
    await session.hello(state.token);
    showStatus(`Checking ${file.name}…`);
    const result = await session.runJob(file, {
      onHashProgress: (done, total) => showStatus(`Checking ${file.name}: ${percent(done, total)} %`),
      onUploadProgress: (done, total) => {
        setBar("upload-bar", "upload-text", done, total);
        showStatus(`Uploading ${file.name}: ${formatBytes(done)} of ${formatBytes(total)}`);
      },
      onUploaded: () => {
        setBar("upload-bar", "upload-text", 1, 1);
        showStatus("Package delivered and verified; waiting for the job to start.");
      },
      onStatus: (jobState) => showStatus(`Job ${jobState}.`),
      onLog: appendLog,
      onProgress: (done, total) => setBar("job-bar", "job-text", done, total, `${done} / ${total}`),
      onResultStarted: (meta) => showStatus(`Receiving ${meta.name} (${formatBytes(meta.size)})…`),
    });
    result.results.forEach(offerResult);
    if (result.ok) {
      showStatus(`Job ${result.jobId} complete: ${result.results.length} result file${result.results.length === 1 ? "" : "s"}.`);
      setState("done");
    } else {
      showStatus(`Job ${result.jobId} failed.`);
      showError(`The job failed: ${result.reason}`);
      setState("failed");
    }
  } catch (error) {
    if (error instanceof SignalingError) {
      showError(describeSignalingError(error, state.room));
    } else if (error instanceof AuthError) {
      showError(`The worker “${workerId}” refused the token: ${error.message}.`);
    } else {
      showError(error.message || String(error));
    }
    showStatus("");
    setState("failed");
  } finally {
    state.session = null;
    session?.close();
  }
}

function init() {
  $("connect-form").addEventListener("submit", (event) => connect(event));
  $("worker").addEventListener("change", () => setState(document.body.dataset.state));
  $("package").addEventListener("change", () => choose($("package").files[0] || null));
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    if (event.dataTransfer.files.length > 0) choose(event.dataTransfer.files[0]);
  });
  $("run").addEventListener("click", () => run());
  $("cancel").addEventListener("click", () => {
    state.session?.cancel();
    showStatus("Cancelling the job…");
  });
  // Leaving the page cancels the job; the worker also notices the peer leaving the room.
  window.addEventListener("pagehide", () => {
    state.session?.cancel();
    state.session?.close();
    state.signaling?.close();
  });
  setState("idle");
}

init();
