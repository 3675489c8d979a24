// The chat page. Talks to the server's public API only: /v1/models, /ready,
// /chains/{conversation,rag,agent}/stream_events (LangServe), and /ui/api/* for the
// default model, knowledge bases and stored conversations. No build step, no framework.
"use strict";

const $ = (id) => document.getElementById(id);
const CHAINS = { chat: "conversation", kb: "rag", agent: "agent" };
const state = {
  key: localStorage.getItem("chatbot.key") || "",
  session: null,        // id of the open conversation (the conversation chain's session_id)
  controller: null,     // AbortController of the answer being streamed
};

class HTTPError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

// --- HTTP ---------------------------------------------------------------------------

function headers(extra = {}) {
  return state.key ? { ...extra, Authorization: `Bearer ${state.key}` } : extra;
}

async function httpError(response) {
  let message = response.statusText || "request failed";
  try {
    const body = await response.json();
    message = body?.error?.message || body?.message ||
      (body?.detail ? JSON.stringify(body.detail) : message);
  } catch { /* not JSON */ }
  if (response.status === 401) askKey(message);
  return new HTTPError(response.status, message);
}

async function api(path, options = {}, alsoOk = []) {
  const response = await fetch(path, { ...options, headers: headers(options.headers) });
  if (!response.ok && !alsoOk.includes(response.status)) throw await httpError(response);
  return response.json();
}

function describe(error) {
  if (!(error instanceof HTTPError)) return error.message || String(error);
  const why = {
    400: "Rejected", 401: "API key needed", 404: "Not found", 413: "Too large",
    429: "Busy", 503: "Unavailable", 504: "Timed out",
  }[error.status] || "Server error";
  return `${why} (HTTP ${error.status}): ${error.message}`;
}

function showError(error, context = "") {
  $("error-text").textContent = (context ? `${context}: ` : "") +
    (typeof error === "string" ? error : describe(error));
  $("error").hidden = false;
}
function clearError() { $("error").hidden = true; }

// Server-sent events from a fetch response: yields {event, data}.
async function* readSSE(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer = (buffer + decoder.decode(value, { stream: true })).replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      yield { event, data: data.join("\n") };
    }
  }
}

// --- rendering ----------------------------------------------------------------------

function markdown(text) {
  return DOMPurify.sanitize(marked.parse(text || ""));
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (name === "class") node.className = value; else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function textOf(content) {
  if (typeof content === "string") return content;
  if (Array.isArray(content)) return content.map((p) => (typeof p === "string" ? p : p?.text || "")).join("");
  return content == null ? "" : JSON.stringify(content);
}

function baseName(path) { return String(path || "").split(/[\\/]/).pop(); }

function renderSources(sources) {
  if (!sources?.length) return null;
  const list = el("ol");
  for (const s of sources) {
    let where = baseName(s.source);
    if (s.page) where += `, page ${s.page}`;
    if (s.start_line) where += `, lines ${s.start_line}-${s.end_line ?? s.start_line}`;
    list.append(el("li", {}, el("span", { class: "where", title: s.source }, where),
      el("span", { class: "snippet" }, s.snippet || "")));
  }
  return el("div", { class: "sources" }, "Sources", list);
}

function stepView(step) {
  const args = typeof step.input === "string" ? step.input : JSON.stringify(step.input);
  const node = el("div", { class: "step" }, "tool ", el("span", { class: "tool" }, step.name),
    " ", el("code", {}, args ?? ""));
  if (step.output !== undefined) node.append(el("div", {}, "\u2192 ", el("code", {}, step.output)));
  return node;
}

class MessageView {
  constructor(type, text = "") {
    $("empty")?.remove();
    this.node = el("div", { class: `msg ${type}` });
    this.steps = el("div", { class: "steps" });
    this.body = el("div", { class: "body" });
    this.meta = el("div", { class: "meta" });
    if (type === "human") this.node.textContent = text;
    else { this.node.append(this.steps, this.body, this.meta); this.setText(text); }
    $("messages").append(this.node);
    this.scroll();
  }
  setText(text) {
    this.text = text;
    if (this.pending) return;
    this.pending = requestAnimationFrame(() => {  // one Markdown render per frame
      this.pending = null;
      this.body.innerHTML = markdown(this.text);
      this.scroll();
    });
  }
  flush() {  // render now (the answer is complete)
    if (this.pending) cancelAnimationFrame(this.pending);
    this.pending = null;
    this.body.innerHTML = markdown(this.text);
    this.scroll();
  }
  setSteps(steps) { this.steps.replaceChildren(...steps.map(stepView)); this.scroll(); }
  setSources(sources) {
    this.node.querySelector(".sources")?.remove();
    const view = renderSources(sources);
    if (view) this.meta.before(view);
  }
  fail(message) { this.node.append(el("div", { class: "failed" }, message)); }
  scroll() { const box = $("messages"); box.scrollTop = box.scrollHeight; }
}

// --- models, knowledge bases, conversations -----------------------------------------

async function loadModels() {
  const [models, config, ready] = await Promise.all([
    api("/v1/models"), api("/ui/api/config"), api("/ready", {}, [503]).catch(() => ({})),  // 503: still loading
  ]);
  const select = $("model");
  const previous = select.value;
  select.replaceChildren();
  for (const card of models.data.filter((m) => m.kind === "chat")) {
    const caps = (card.capabilities || []).filter((c) => ["tools", "json_schema", "vision"].includes(c))
      .map((c) => (c === "json_schema" ? "json" : c));
    const status = ready.models?.[card.id];
    let label = card.id + (caps.length ? ` (${caps.join(", ")})` : "");
    if (status === "failed") label += " (failed to load)";
    else if (status === "loading") label += " (loading\u2026)";
    select.append(el("option", { value: card.id, title: (card.capabilities || []).join(", ") }, label));
  }
  select.value = previous || config.default_model || select.options[0]?.value || "";
  const failed = Object.entries(ready.errors || {});
  if (failed.length) showError(failed.map(([m, e]) => `${m}: ${e}`).join("; "), "A model failed to load");
}

async function loadKBs() {
  const { data } = await api("/ui/api/kbs");
  const select = $("kb");
  const previous = select.value;
  select.replaceChildren(el("option", { value: "" }, data.length ? "(pick one)" : "(none yet)"));
  $("kb-names").replaceChildren();
  for (const kb of data) {
    const files = `${kb.files} file${kb.files === 1 ? "" : "s"}`;
    select.append(el("option", { value: kb.name }, `${kb.name} (${files})`));
    $("kb-names").append(el("option", { value: kb.name }));
  }
  if (data.some((kb) => kb.name === previous)) select.value = previous;
}

async function loadConversations() {
  const { data } = await api("/ui/api/conversations");
  const list = $("conversations");
  list.replaceChildren();
  for (const c of data) {
    const open = el("button", { class: "open", type: "button", title: c.title }, c.title || "(untitled)");
    open.onclick = () => { openConversation(c.session_id); closeMenu(); };
    const del = el("button", { class: "delete", type: "button", "aria-label": `Delete ${c.title}`, title: "Delete" }, "\u2715");
    del.onclick = () => deleteConversation(c.session_id);
    list.append(el("li", { class: c.session_id === state.session ? "active" : "", "data-id": c.session_id }, open, del));
  }
}

function newConversation() {
  state.session = null;
  history.replaceState(null, "", location.pathname);
  $("messages").replaceChildren(el("p", { id: "empty", class: "hint" }, "New conversation."));
  document.querySelectorAll("#conversations li.active").forEach((li) => li.classList.remove("active"));
}

async function openConversation(id) {
  const { messages } = await api(`/ui/api/conversations/${encodeURIComponent(id)}`);
  state.session = id;
  history.replaceState(null, "", `#c=${encodeURIComponent(id)}`);
  $("messages").replaceChildren();
  for (const m of messages) {
    const view = new MessageView(m.type === "human" ? "human" : "ai", textOf(m.data.content));
    const extra = m.data.response_metadata || {};
    if (extra.steps) view.setSteps(extra.steps);
    if (extra.sources) view.setSources(extra.sources);
  }
  if (!messages.length) $("messages").append(el("p", { id: "empty", class: "hint" }, "Empty conversation."));
  await loadConversations();
}

async function deleteConversation(id) {
  try {
    await api(`/ui/api/conversations/${encodeURIComponent(id)}`, { method: "DELETE" });
    if (id === state.session) newConversation();
    await loadConversations();
  } catch (error) { showError(error, "Could not delete the conversation"); }
}

function newId() {
  const bytes = crypto.getRandomValues(new Uint8Array(12));  // randomUUID needs https
  return "web-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// --- asking -------------------------------------------------------------------------

function setBusy(busy) {
  $("send").hidden = busy;
  $("stop").hidden = !busy;
}

function requestInput(mode, text) {
  const model = $("model").value || null;
  const kb = $("kb").value;
  if (mode === "kb") return { question: text, kb, model };
  if (mode === "agent") return kb ? { input: text, kb, model } : { input: text, model };
  return { input: text, session_id: state.session, model };
}

async function ask(text) {
  const mode = $("mode").value;
  if (mode === "kb" && !$("kb").value) {
    showError("Pick a knowledge base first (or upload files into one).");
    return;
  }
  clearError();
  const fresh = !state.session;
  if (fresh) state.session = newId();
  new MessageView("human", text);
  const view = new MessageView("ai");
  view.node.classList.add("streaming");
  const controller = new AbortController();
  state.controller = controller;
  setBusy(true);
  const started = performance.now();
  const usage = { input: 0, output: 0 };
  const steps = [];
  let answer = "", sources = null, outcome = "ok", chunks = 0;
  try {
    const response = await fetch(`/chains/${CHAINS[mode]}/stream_events`, {
      method: "POST",
      headers: headers({ "Content-Type": "application/json" }),
      body: JSON.stringify({ input: requestInput(mode, text) }),
      signal: controller.signal,
    });
    if (!response.ok) throw await httpError(response);
    for await (const { event, data } of readSSE(response)) {
      if (event === "end") break;
      if (event === "error") {
        const body = JSON.parse(data);
        throw new HTTPError(body.status_code || 500, body.error?.message || body.message);
      }
      if (event !== "data") continue;
      const e = JSON.parse(data);
      const root = !e.parent_ids?.length;
      if (e.event === "on_chat_model_stream") {
        const delta = textOf(e.data.chunk?.content);
        if (delta) { answer += delta; view.node.dataset.chunks = ++chunks; view.setText(answer); }
      } else if (e.event === "on_chat_model_end") {
        const u = e.data.output?.usage_metadata;
        if (u) { usage.input += u.input_tokens || 0; usage.output += u.output_tokens || 0; }
      } else if (e.event === "on_tool_start") {
        steps.push({ name: e.name, input: e.data.input, run: e.run_id });
        answer = "";  // text before a tool call was the model thinking aloud
        view.setText(answer);
        view.setSteps(steps);
      } else if (e.event === "on_tool_end") {
        const step = steps.find((s) => s.run === e.run_id);
        const out = e.data.output;
        if (step) step.output = typeof out === "string" ? out : textOf(out?.content ?? out);
        view.setSteps(steps);
      } else if (root && e.event === "on_chain_stream" && e.data.chunk?.sources) {
        sources = e.data.chunk.sources;
        view.setSources(sources);
      } else if (root && e.event === "on_chain_end") {
        const out = e.data.output || {};
        const final = textOf(out.answer ?? out.output ?? out.content ?? "");
        if (final && !answer.trim()) { answer = final; view.setText(answer); }
        if (out.sources && !sources) { sources = out.sources; view.setSources(sources); }
      }
    }
  } catch (error) {
    if (error.name === "AbortError") outcome = "stopped";
    else { outcome = "error"; view.fail(describe(error)); showError(error); }
  } finally {
    state.controller = null;
    setBusy(false);
    view.flush();
    view.node.classList.remove("streaming");
  }
  const seconds = ((performance.now() - started) / 1000).toFixed(1);
  if (outcome === "stopped") view.meta.textContent = `stopped after ${seconds} s (not saved)`;
  else if (outcome === "ok") {
    view.meta.textContent = (usage.input || usage.output
      ? `${usage.input} tokens in \u00B7 ${usage.output} out \u00B7 ` : "") + `${seconds} s`;
    if (mode !== "chat") await saveTurn(mode, text, answer, sources, steps);
  }
  if (fresh && outcome !== "ok" && mode === "chat") state.session = null;  // nothing stored
  else history.replaceState(null, "", `#c=${encodeURIComponent(state.session)}`);
  loadConversations().catch(() => {});
}

async function saveTurn(mode, question, answer, sources, steps) {
  // The RAG and agent chains keep no history: store their turn in the conversation.
  const extra = { mode };
  if (sources) extra.sources = sources;
  if (steps.length) extra.steps = steps.map(({ name, input, output }) => ({ name, input, output }));
  try {
    await api(`/ui/api/conversations/${encodeURIComponent(state.session)}/messages`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ messages: [
        { type: "human", data: { content: question } },
        { type: "ai", data: { content: answer, response_metadata: extra } },
      ] }),
    });
  } catch (error) { showError(error, "The answer could not be saved"); }
}

// --- API key, menu, start-up --------------------------------------------------------

function askKey(reason) {
  const dialog = $("key-dialog");
  if (dialog.open) return;
  $("key-reason").textContent = reason ? `This server needs an API key (${reason})` : "API key for this server:";
  $("key-input").value = state.key;
  dialog.showModal();
}

function closeMenu() { document.body.classList.remove("menu-open"); }

async function start() {
  clearError();
  try {
    await loadModels();
  } catch (error) {
    showError(error, "Could not load the models");
    return;
  }
  await Promise.all([
    loadKBs().catch((error) => showError(error, "Could not list knowledge bases")),
    loadConversations().catch((error) => showError(error, "Could not list conversations")),
  ]);
  const id = new URLSearchParams(location.hash.slice(1)).get("c");
  if (id) await openConversation(id).catch((error) => showError(error, "Could not open the conversation"));
}

function wire() {
  marked.setOptions({ gfm: true, breaks: true });
  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = $("input").value.trim();
    if (!text || state.controller) return;
    $("input").value = "";
    ask(text);
  });
  $("input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); $("composer").requestSubmit(); }
  });
  $("stop").onclick = () => state.controller?.abort();  // the server cancels on disconnect
  $("mode").onchange = () => { $("kb-label").hidden = $("mode").value === "chat"; };
  $("new-chat").onclick = () => { newConversation(); closeMenu(); };
  $("upload-button").onclick = upload;
  $("error-close").onclick = clearError;
  $("key-button").onclick = () => askKey("");
  $("menu").onclick = () => document.body.classList.toggle("menu-open");
  $("messages").addEventListener("click", closeMenu);
  $("key-dialog").addEventListener("close", () => {
    if ($("key-dialog").returnValue !== "save") return;
    state.key = $("key-input").value.trim();
    if (state.key) localStorage.setItem("chatbot.key", state.key);
    else localStorage.removeItem("chatbot.key");
    start();
  });
  start();
}

wire();
