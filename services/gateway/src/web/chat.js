"use strict";
// A hand-rolled protobuf codec for the few messages this page sends and
// reads, so the page needs no build step and no external assets.
// Field numbers follow proto/thoughtpartner/v1/conversation.proto.
const PKG = "/thoughtpartner.v1.ConversationService/";
const CODES = ["OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
  "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
  "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"];

function varint(n, out) { while (n > 127) { out.push((n & 127) | 128); n >>>= 7; } out.push(n); }
function encodeStrings(fields) {
  const out = [];
  for (const [number, value] of fields) {
    if (!value) continue;
    const bytes = new TextEncoder().encode(value);
    varint((number << 3) | 2, out); varint(bytes.length, out);
    for (const b of bytes) out.push(b);
  }
  return new Uint8Array(out);
}
// Returns {fieldNumber: [Uint8Array | number, ...]}.
function decode(bytes) {
  const fields = {}; let i = 0;
  const readVarint = () => { let n = 0, shift = 0, b;
    do { b = bytes[i++]; n += (b & 127) * 2 ** shift; shift += 7; } while (b & 128); return n; };
  while (i < bytes.length) {
    const key = readVarint(), number = Math.floor(key / 8), wire = key & 7; let value;
    if (wire === 0) value = readVarint();
    else if (wire === 2) { const len = readVarint(); value = bytes.subarray(i, i + len); i += len; }
    else if (wire === 1) { i += 8; continue; }
    else if (wire === 5) { i += 4; continue; }
    else throw new Error("unsupported protobuf wire type " + wire);
    (fields[number] = fields[number] || []).push(value);
  }
  return fields;
}
const text = (bytes) => bytes ? new TextDecoder().decode(bytes) : "";

class RpcError extends Error {
  constructor(code, message) { super(message); this.code = code; }
  toString() { return (CODES[this.code] || "code " + this.code) + ": " + this.message; }
}
function statusOf(get) {
  const code = get("grpc-status");
  if (code === null || code === undefined) return null;
  let message = get("grpc-message") || "";
  try { message = decodeURIComponent(message); } catch (_) {}
  return new RpcError(Number(code), message);
}

// One gRPC-Web call; `onMessage` gets each response message's bytes.
async function call(method, body, onMessage) {
  const frame = new Uint8Array(5 + body.length);
  new DataView(frame.buffer).setUint32(1, body.length);
  frame.set(body, 5);
  const response = await fetch(PKG + method, {
    method: "POST",
    headers: { "content-type": "application/grpc-web+proto", "x-grpc-web": "1",
               "authorization": "Bearer " + tokenInput.value.trim() },
    body: frame,
  });
  const early = statusOf((h) => response.headers.get(h));
  if (early && early.code !== 0) throw early;
  if (!response.ok) throw new RpcError(14, "the gateway answered HTTP " + response.status);
  const reader = response.body.getReader();
  let buffer = new Uint8Array(0), status = early;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    const joined = new Uint8Array(buffer.length + value.length);
    joined.set(buffer); joined.set(value, buffer.length); buffer = joined;
    while (buffer.length >= 5) {
      const len = new DataView(buffer.buffer, buffer.byteOffset).getUint32(1);
      if (buffer.length < 5 + len) break;
      const flag = buffer[0], payload = buffer.subarray(5, 5 + len);
      buffer = buffer.subarray(5 + len);
      if (flag & 0x80) {
        const trailers = {};
        for (const line of text(payload).split("\r\n")) {
          const at = line.indexOf(":");
          if (at > 0) trailers[line.slice(0, at).trim().toLowerCase()] = line.slice(at + 1).trim();
        }
        status = statusOf((h) => trailers[h]);
      } else {
        onMessage(payload);
      }
    }
  }
  if (!status) throw new RpcError(2, "the call ended without a gRPC status");
  if (status.code !== 0) throw status;
}

const tokenInput = document.getElementById("token");
const transcript = document.getElementById("transcript");
const statusLine = document.getElementById("status");
const messageInput = document.getElementById("message");
const sendButton = document.getElementById("send");
const conversationLabel = document.getElementById("conversation");
let conversationId = "";

tokenInput.value = localStorage.getItem("tp-token") || "";
tokenInput.addEventListener("change", () => localStorage.setItem("tp-token", tokenInput.value.trim()));
document.getElementById("new").addEventListener("click", () => {
  conversationId = ""; conversationLabel.textContent = ""; transcript.replaceChildren(); setStatus("");
});
messageInput.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && event.ctrlKey) document.getElementById("composer").requestSubmit();
});

function setStatus(message, isError) {
  statusLine.textContent = message; statusLine.className = isError ? "error" : "";
}
function addTurn(role, content) {
  const turn = document.createElement("div");
  turn.className = "turn " + role; turn.textContent = content;
  transcript.appendChild(turn); turn.scrollIntoView({ block: "end" });
  return turn;
}

async function createConversation(title) {
  let id = "";
  await call("CreateConversation", encodeStrings([[1, title]]), (bytes) => {
    const conversation = decode(bytes)[1];
    if (conversation) id = text(decode(conversation[0])[1]?.[0]);
  });
  if (!id) throw new RpcError(2, "CreateConversation returned no conversation id");
  return id;
}

document.getElementById("composer").addEventListener("submit", async (event) => {
  event.preventDefault();
  const content = messageInput.value.trim();
  if (!content) return;
  if (!tokenInput.value.trim()) { setStatus("Paste a token first (tp dev token …).", true); return; }
  localStorage.setItem("tp-token", tokenInput.value.trim());
  sendButton.disabled = true;
  try {
    if (!conversationId) {
      setStatus("Starting a conversation…");
      conversationId = await createConversation(content.slice(0, 60));
      conversationLabel.textContent = "conversation " + conversationId;
    }
    addTurn("user", content);
    messageInput.value = "";
    const reply = addTurn("assistant", "");
    reply.classList.add("streaming");
    setStatus("Thinking…");
    // One key per turn: a retry of this same turn would replay, not repeat it.
    const key = crypto.randomUUID();
    await call("SendMessage", encodeStrings([[1, conversationId], [2, content], [3, key]]), (bytes) => {
      const event = decode(bytes);
      if (event[1]) { reply.textContent += text(decode(event[1][0])[1]?.[0]); setStatus(""); }
      if (event[2]) {
        // completed: the stored assistant message (field 2) holds the whole reply.
        const stored = decode(event[2][0])[2];
        const content = stored && decode(stored[0])[4];
        if (content) reply.textContent = text(content[0]);
        reply.dataset.complete = "true";
      }
    });
    reply.classList.remove("streaming");
    setStatus(reply.dataset.complete ? "Reply stored." : "The reply ended without completing.", !reply.dataset.complete);
  } catch (error) {
    document.querySelectorAll(".turn.streaming").forEach((t) => t.classList.remove("streaming"));
    setStatus(error instanceof RpcError ? error.toString() : "Could not reach the gateway: " + error.message, true);
  } finally {
    sendButton.disabled = false;
  }
});
