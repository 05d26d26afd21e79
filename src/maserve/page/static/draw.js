/* The prediction page's drawing canvas (see page.js), for image models. */

import {h, isError, parseJson, scalarOf, showAnswer, showFailure} from "./common.js";
import {call, socketClient} from "./stream.js";

const DRAW_EVERY_MS = 120; // at most one drawing request per this, and one in flight

/* A canvas to draw on with a mouse, a finger or a pen: each change is sent as PNG while you
   draw (over the WebSocket twin when there is one, else POSTed), the newest drawing first. */
export function drawPanel(api, field, socketApi) {
  const canvas = h("canvas", {width: 280, height: 280, class: "draw", "aria-label": "draw here"});
  const ctx = canvas.getContext("2d");
  const live = h("div", {class: "live", "aria-live": "polite", text: "draw a digit"});
  const box = h("div", {class: "result"});
  const via = h("span", {class: "via-label", text: socketApi ? `sent over WebSocket ${socketApi.url}` : `sent as ${api.method} ${api.url}`});
  let socket = socketApi ? socketClient(socketApi.url) : null;
  let drawing = false;
  let dirty = false;
  let busy = false;
  let lastSent = 0;
  let timer = null;
  let last = null;
  let strokes = 0;
  let panel = null;
  // "idle" once the newest drawing has its answer (for people: the live answer is current)
  const mark = () => { if (panel) panel.dataset.state = busy || dirty || timer ? "sending" : "idle"; };
  const clear = () => {
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    strokes = 0;
    live.textContent = "draw a digit";
    box.replaceChildren();
    box.className = "result";
  };
  clear();
  Object.assign(ctx, {lineWidth: 22, lineCap: "round", lineJoin: "round", strokeStyle: "#000"});
  const point = (event) => {
    const rect = canvas.getBoundingClientRect();
    return {x: (event.clientX - rect.left) * canvas.width / rect.width, y: (event.clientY - rect.top) * canvas.height / rect.height};
  };
  const line = (from, to) => {
    ctx.beginPath();
    ctx.moveTo(from.x, from.y);
    ctx.lineTo(to.x + 0.01, to.y);
    ctx.stroke();
  };
  const send = async (blob) => {
    const started = performance.now();
    if (socket) {
      try {
        const text = await socket.ask(blob);
        const json = parseJson(text);
        showAnswer(box, {status: null, ms: performance.now() - started, text, json, via: `WebSocket ${socketApi.url}`,
          schema: socketApi.response_schema});
        return json;
      } catch (error) {
        if (!socket.everOpened()) { // no WebSocket here (a proxy?): POST from now on
          socket = null;
          via.textContent = `sent as ${api.method} ${api.url} (WebSocket ${socketApi.url} failed: ${error.message})`;
        } else {
          showFailure(box, error.message);
          return undefined;
        }
      }
    }
    const data = new FormData();
    data.append(field, blob, "drawing.png");
    return call(api, {body: data}, box);
  };
  const pump = () => {
    if (busy || !dirty || strokes === 0) { mark(); return; }
    const wait = lastSent + DRAW_EVERY_MS - performance.now();
    if (wait > 0) {
      timer ??= setTimeout(() => { timer = null; pump(); }, wait);
      mark();
      return;
    }
    dirty = false;
    busy = true;
    mark();
    canvas.toBlob(async (blob) => {
      try {
        const json = await send(blob);
        const scalar = isError(json) ? null : scalarOf(json, api.response_schema);
        live.textContent = isError(json) ? json.error_code : scalar ? String(scalar[1]) : "?";
        live.dataset.value = live.textContent;
      } finally {
        busy = false;
        lastSent = performance.now();
        pump();
      }
    }, "image/png");
  };
  canvas.addEventListener("pointerdown", (event) => {
    event.preventDefault();
    canvas.setPointerCapture(event.pointerId);
    drawing = true;
    strokes += 1;
    last = point(event);
    line(last, last);
    dirty = true;
    pump();
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!drawing) return;
    const next = point(event);
    line(last, next);
    last = next;
    dirty = true;
    pump();
  });
  const end = () => { if (drawing) { drawing = false; dirty = true; pump(); } };
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);
  panel = h("div", {class: "draw-panel", "data-state": "idle"}, h("h3", {text: "Draw: each stroke is sent as PNG as you draw"}),
    h("div", {class: "draw-side"}, canvas, h("div", {class: "row"}, h("button", {type: "button", class: "clear", text: "Clear", onclick: clear}), via)),
    h("div", {class: "draw-answer"}, live, box));
  return panel;
}
