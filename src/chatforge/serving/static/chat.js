// The chat page: talks to the server's own /v1/chat/completions, streamed. Model output is rendered as
// Markdown, then sanitized by DOMPurify before it reaches the page; tool calls and outputs are set as text.
import { marked } from "./vendor/marked.esm.js";
import DOMPurify from "./vendor/purify.es.mjs";
import { EventSourceParserStream } from "./vendor/eventsource-parser/stream.js";

const $ = (id) => document.getElementById(id);
let history = [];
let model = null;

function headers() {
  const key = $("api-key").value.trim();
  return { "Content-Type": "application/json", ...(key ? { Authorization: `Bearer ${key}` } : {}) };
}

function add(kind, text = "") {
  const element = document.createElement("div");
  element.className = `message ${kind}`;
  element.textContent = text;
  $("messages").append(element);
  element.scrollIntoView({ block: "end" });
  return element;
}

function toolBox(parent, name, label, text) {
  const box = document.createElement("div");
  box.className = `tool tool-${label}`;
  const title = document.createElement("span");
  title.className = "name";
  title.textContent = `${name ?? "tool"} ${label}: `;
  box.append(title, document.createTextNode(text));
  parent.append(box);
}

async function loadModel() {
  const response = await fetch("/v1/models", { headers: headers() });
  if (!response.ok) { $("model").textContent = "(set the API key in Settings)"; return; }
  model = (await response.json()).data[0].id;
  $("model").textContent = model;
}

async function send(text) {
  if (!model) await loadModel();
  history.push({ role: "user", content: text });
  add("user", text);
  const reply = add("assistant");
  let segment = null, answer = "";
  const messages = ($("system").value.trim() ? [{ role: "system", content: $("system").value.trim() }] : [])
    .concat(history);
  const response = await fetch("/v1/chat/completions", {
    method: "POST", headers: headers(),
    body: JSON.stringify({ model, messages, stream: true, temperature: Number($("temperature").value) }),
  });
  if (!response.ok) {
    reply.className = "message error";
    reply.textContent = (await response.json()).error?.message ?? response.statusText;
    history.pop();
    return;
  }
  const events = response.body.pipeThrough(new TextDecoderStream()).pipeThrough(new EventSourceParserStream());
  for await (const event of events) {
    if (event.data === "[DONE]") break;
    const delta = JSON.parse(event.data).choices[0]?.delta ?? {};
    if (delta.content) {
      if (!segment) { segment = document.createElement("div"); segment.className = "text"; segment.raw = ""; reply.append(segment); }
      segment.raw += delta.content;
      answer += delta.content;
      segment.innerHTML = DOMPurify.sanitize(marked.parse(segment.raw));
    } else if (delta.chatforge_tool_call) {
      toolBox(reply, delta.chatforge_tool_call.name, "call", delta.chatforge_tool_call.arguments);
      segment = null;
    } else if (delta.chatforge_tool_output) {
      toolBox(reply, delta.chatforge_tool_output.name, "output", delta.chatforge_tool_output.output);
    }
    reply.scrollIntoView({ block: "end" });
  }
  history.push({ role: "assistant", content: answer });
}

$("composer").addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = $("prompt").value.trim();
  if (!text) return;
  $("prompt").value = "";
  $("send").disabled = true;
  try { await send(text); } finally { $("send").disabled = false; $("prompt").focus(); }
});
$("prompt").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); $("composer").requestSubmit(); }
});
$("new-chat").addEventListener("click", () => { history = []; $("messages").replaceChildren(); });
loadModel();
