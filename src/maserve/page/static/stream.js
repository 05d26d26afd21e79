/* The prediction page's requests and streamed views (see page.js): one HTTP call of an api with its
   answer shown, Server-Sent Events as they arrive, a request-and-answer WebSocket client, and the
   chat panel. */

import {EVENT_STREAM, MAX_EVENTS_SHOWN, h, isObject, isError, parseJson, wsUrl, errorBox, showAnswer, showFailure,
  jsonInit} from "./common.js";

/* Server-Sent Events as they arrive (fetch's body stream: EventSource cannot POST). */
async function showStream(box, response, started, onEvent) {
  const events = h("ol", {class: "events"});
  const counter = h("span", {class: "event-count", text: "0 events"});
  const timing = h("span", {class: "latency", text: "waiting"});
  box.className = "result ok streaming";
  box.dataset.status = String(response.status);
  const rid = response.headers.get("x-request-id");
  box.replaceChildren(h("div", {class: "meta"}, h("span", {class: "status", text: `${response.status} ${response.statusText} · stream`}), timing, counter,
    rid ? h("span", {class: "request-id", text: `request id ${rid}`}) : null), events);
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let count = 0;
  let first = null;
  const handle = (raw) => {
    const event = {event: "message", data: []};
    for (const line of raw.split(/\r\n|\n|\r/)) {
      if (line === "" || line.startsWith(":")) continue;
      const at = line.indexOf(":");
      const field = at < 0 ? line : line.slice(0, at);
      const value = at < 0 ? "" : line.slice(at + 1).replace(/^ /, "");
      if (field === "event") event.event = value;
      else if (field === "data") event.data.push(value);
    }
    if (!event.data.length) return;
    const data = event.data.join("\n");
    const json = parseJson(data);
    count += 1;
    first ??= performance.now() - started;
    counter.textContent = `${count} event${count === 1 ? "" : "s"}`;
    timing.textContent = `first event ${first.toFixed(1)} ms`;
    if (event.event === "error" && isError(json)) {
      box.classList.add("bad");
      box.insertBefore(errorBox(json), events);
    }
    if (count <= MAX_EVENTS_SHOWN) {
      events.append(h("li", {class: event.event === "error" ? "event error-event" : "event"},
        h("span", {class: "at", text: `${(performance.now() - started).toFixed(0)} ms`}),
        event.event !== "message" ? h("span", {class: "name", text: event.event}) : null,
        h("code", {text: json !== undefined && typeof json === "object" ? JSON.stringify(json) : data})));
      events.scrollTop = events.scrollHeight;
    }
    if (onEvent) onEvent(event.event, json, data);
  };
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, {stream: true});
    for (let m = /\r\n\r\n|\n\n|\r\r/.exec(buffer); m; m = /\r\n\r\n|\n\n|\r\r/.exec(buffer)) {
      handle(buffer.slice(0, m.index));
      buffer = buffer.slice(m.index + m[0].length);
    }
  }
  if (buffer.trim()) handle(buffer);
  box.classList.remove("streaming");
  box.classList.add("ended");
  timing.textContent = `first event ${(first ?? 0).toFixed(1)} ms · ${(performance.now() - started).toFixed(1)} ms in all`;
}

/* One HTTP call of an api, its answer shown in `box`; resolves to the parsed JSON answer (or
   undefined) once the whole answer, a stream included, has arrived. */
export async function call(api, init, box, {expected, onEvent} = {}) {
  box.className = "result pending";
  box.dataset.status = "pending";
  box.replaceChildren(h("div", {class: "meta"}, h("span", {class: "status", text: "sending…"})));
  const started = performance.now();
  let response;
  try {
    response = await fetch(api.url, {method: api.method, cache: "no-store", ...init});
  } catch (error) {
    showFailure(box, `${api.method} ${api.url}: ${error.message}`);
    return undefined;
  }
  if ((response.headers.get("content-type") || "").startsWith(EVENT_STREAM)) {
    await showStream(box, response, started, onEvent);
    return undefined;
  }
  const text = await response.text();
  const json = parseJson(text);
  showAnswer(box, {status: response.status, statusText: response.statusText, ms: performance.now() - started,
    requestId: response.headers.get("x-request-id"), text, json, expected, schema: api.response_schema});
  return json;
}

/* One request, one answer over a WebSocket that reconnects when the server closed it (idle). */
export function socketClient(path) {
  let ws = null;
  let opening = null;
  let waiting = null;
  let opened = false;
  const connect = () => {
    if (ws && ws.readyState === WebSocket.OPEN) return Promise.resolve(ws);
    opening ??= new Promise((resolve, reject) => {
      const socket = new WebSocket(wsUrl(path));
      socket.binaryType = "arraybuffer";
      socket.onopen = () => { ws = socket; opening = null; opened = true; resolve(socket); };
      socket.onclose = (event) => {
        if (ws === socket) ws = null;
        const error = new Error(`WebSocket closed (${event.code}${event.reason ? " " + event.reason : ""})`);
        if (opening) { opening = null; reject(error); }
        if (waiting) { waiting.reject(error); waiting = null; }
      };
      socket.onmessage = (event) => {
        if (waiting) { const w = waiting; waiting = null; w.resolve(typeof event.data === "string" ? event.data : "(binary message)"); }
      };
    });
    return opening;
  };
  return {
    everOpened: () => opened,
    ask: async (data) => {
      const socket = await connect();
      return new Promise((resolve, reject) => { waiting = {resolve, reject}; socket.send(data); });
    },
  };
}

/* A chat (a messages-array JSON api, OpenAI's shape): the conversation in bubbles, each reply
   streamed in as its events arrive when the api streams. */
export function chatPanel(api, editorText) {
  const schemaProps = api.request_schema.properties || {};
  const streams = api.response_type === EVENT_STREAM && "stream" in schemaProps;
  const log = h("div", {class: "chat-log", "aria-live": "polite"});
  const input = h("textarea", {class: "chat-input", rows: 2, placeholder: "Write a message (Enter sends, Shift+Enter: new line)"});
  const box = h("div", {class: "result"});
  const history = [];
  const bubble = (role, text) => {
    const el = h("div", {class: `bubble ${role}`, "data-role": role}, h("span", {class: "who", text: role}), h("span", {class: "text", text}));
    log.append(el);
    log.scrollTop = log.scrollHeight;
    return el.querySelector(".text");
  };
  const send = async () => {
    const text = input.value.trim();
    if (!text) return;
    input.value = "";
    const base = parseJson(editorText()) || {};
    const system = Array.isArray(base.messages) ? base.messages.filter((m) => isObject(m) && ["system", "developer"].includes(m.role)) : [];
    history.push({role: "user", content: text});
    bubble("user", text);
    const reply = bubble("assistant", "");
    reply.parentElement.classList.add("pending");
    const body = {...base, messages: [...system, ...history]};
    if (streams) body.stream = true;
    const json = await call(api, jsonInit(JSON.stringify(body)), box, {
      onEvent: (name, data) => {
        const delta = isObject(data) && Array.isArray(data.choices) ? data.choices[0]?.delta?.content : undefined;
        if (typeof delta === "string") reply.textContent += delta;
        log.scrollTop = log.scrollHeight;
      },
    });
    const whole = isObject(json) && Array.isArray(json.choices) ? json.choices[0]?.message?.content : undefined;
    if (typeof whole === "string") reply.textContent = whole;
    if (isError(json)) reply.textContent = `${json.error_code}: ${json.error_msg}`;
    reply.parentElement.classList.remove("pending");
    reply.parentElement.classList.add("done");
    history.push({role: "assistant", content: reply.textContent});
  };
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); send(); }
  });
  return h("div", {class: "chat"},
    h("p", {class: "hint", text: `A chat: the conversation is sent as "messages" with the other fields of the JSON body below${streams ? ", streamed" : ""}.`}),
    log, h("div", {class: "row"}, input, h("button", {type: "button", class: "chat-send", text: "Send", onclick: send}),
      h("button", {type: "button", class: "chat-clear", text: "New chat", onclick: () => { history.length = 0; log.replaceChildren(); }})),
    box);
}
