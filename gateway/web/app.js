// The provincial dashboard: polls the gateway's own JSON once a second and
// redraws. No library, no CDN: everything the page needs is served by the
// gateway itself.
"use strict";

const COLORS = ["#2e86c1", "#c0392b", "#27ae60", "#8e44ad", "#d68910", "#16a085", "#7f8c8d",
  "#cb4335", "#1f618d", "#b7950b", "#6c3483", "#117a65", "#a04000", "#5d6d7e"];
const state = { window: "day", cursor: 0, names: {}, categoryNames: {} };

const $ = (sel) => document.querySelector(sel);
const el = (tag, attrs = {}, ...children) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
};
const svg = (tag, attrs = {}, text) => {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
};
const pct = (x) => (x * 100).toFixed(0) + "%";
const dur = (ms) => {
  if (!ms) return "–";
  if (ms < 1000) return ms.toFixed(0) + " ms";
  if (ms < 60000) return (ms / 1000).toFixed(1) + " s";
  if (ms < 3600000) return (ms / 60000).toFixed(1) + " min";
  if (ms < 86400000) return (ms / 3600000).toFixed(1) + " h";
  return (ms / 86400000).toFixed(1) + " d";
};
const cityName = (id) => state.names[id] ? `${state.names[id]}` : id;
const catName = (id) => state.categoryNames[id] || id;
const clock = (ms) => new Date(ms).toLocaleTimeString("zh-CN", { hour12: false });

function renderCards(data) {
  const box = $("#cities");
  for (const s of data.stats) {
    let card = box.querySelector(`[data-city="${s.city}"]`);
    if (!card) {
      card = el("article", { class: "city-card", "data-city": s.city },
        el("h3", {}, s.name || s.city, " ", el("small", {}, s.city)), el("dl"));
      box.append(card);
    }
    const rows = [
      ["sent", "sent", s.sent],
      ["received", "received", s.received],
      ["accepted", "accepted", s.accepted],
      ["resolved", "resolved", s.resolved],
      ["on_time", "on time", s.resolved ? pct(s.resolved_on_time / s.resolved) : "–"],
      ["satisfaction", "satisfied", s.satisfaction_rate ? pct(s.satisfaction_rate) : "–"],
      ["accept_p50", "to accept p50 / p90", `${dur(s.accept_ms_p50)} / ${dur(s.accept_ms_p90)}`],
      ["resolve_p50", "to resolve p50 / p90", `${dur(s.resolve_ms_p50)} / ${dur(s.resolve_ms_p90)}`],
      ["transfers", "transfers out / in", `${s.transfers_out} / ${s.transfers_in}`],
      ["answer_rate", "answered", s.transfers_in ? pct(s.answer_rate) : "–"],
      ["overdue_open", "overdue now", s.overdue_open],
    ];
    const dl = card.querySelector("dl");
    dl.replaceChildren(...rows.flatMap(([key, label, value]) => [
      el("dt", {}, label),
      el("dd", { class: key + (key === "overdue_open" && value > 0 ? " hot" : "") }, value),
    ]));
  }
}

function renderMatrix(data) {
  const cities = data.cities.map((c) => c.id);
  const cell = {};
  let max = 1;
  for (const f of data.flow) {
    const k = f.origin + ">" + f.target;
    const c = cell[k] || (cell[k] = { tickets: 0, transfers: 0 });
    c.tickets += f.tickets;
    c.transfers += f.transfers;
    max = Math.max(max, c.tickets + c.transfers);
  }
  const box = $("#matrix");
  const label = 90, size = Math.max(36, Math.min(80, (box.clientWidth - label) / (cities.length || 1)));
  const h = label / 3 + size * cities.length + 8;
  box.setAttribute("viewBox", `0 0 ${label + size * cities.length + 4} ${h}`);
  box.style.height = Math.min(520, h * 1.1) + "px";
  box.replaceChildren();
  // Column heads carry the short (Chinese) name: the cells are narrow.
  const short = (id) => cityName(id).split(" ")[0];
  cities.forEach((to, j) => box.append(svg("text", { x: label + j * size + size / 2, y: label / 4, "text-anchor": "middle" }, "→ " + short(to))));
  cities.forEach((from, i) => {
    const y = label / 3 + i * size;
    box.append(svg("text", { x: label - 8, y: y + size / 2 + 4, "text-anchor": "end" }, cityName(from) + " →"));
    cities.forEach((to, j) => {
      const c = cell[from + ">" + to] || { tickets: 0, transfers: 0 };
      const v = c.tickets + c.transfers;
      const a = from === to ? 0.04 : 0.08 + 0.85 * (v / max);
      const g = svg("g", { "data-origin": from, "data-target": to });
      g.append(svg("rect", { x: label + j * size + 1, y: y + 1, width: size - 2, height: size - 2, rx: 3, fill: `rgba(192,57,43,${a.toFixed(3)})` }));
      g.append(svg("text", { class: "n", x: label + j * size + size / 2, y: y + size / 2 + 4, "text-anchor": "middle", fill: a > 0.5 ? "#fff" : "#1d2330" },
        from === to ? "" : (c.transfers ? `${c.tickets} (+${c.transfers})` : `${c.tickets}`)));
      g.append(svg("title", {}, `${cityName(from)} → ${cityName(to)}: ${c.tickets} tickets, ${c.transfers} transfers`));
      box.append(g);
    });
  });
}

function renderCategories(data) {
  const per = {};
  for (const f of data.flow) per[f.category] = (per[f.category] || 0) + f.tickets;
  const max = Math.max(1, ...Object.values(per));
  const rows = data.categories.map((c, i) => {
    const n = per[c.id] || 0;
    return el("div", { class: "bar", "data-category": c.id },
      el("span", {}, c.name),
      el("span", { class: "track" }, Object.assign(el("span", { class: "fill" }), { style: `width:${(100 * n / max).toFixed(1)}%;background:${COLORS[i % COLORS.length]}` })),
      el("span", { class: "n" }, n));
  });
  $("#categories").replaceChildren(...rows);
}

function renderLists(data) {
  $("#coordination-count").textContent = `${data.coordination.waiting} waiting`;
  $("#coordination tbody").replaceChildren(...data.coordination.items.map((i) => el("tr", {},
    el("td", { class: "id" }, i.id), el("td", {}, cityName(i.origin)), el("td", {}, cityName(i.rejected_by)), el("td", {}, catName(i.category)))));
  $("#overdue-count").textContent = `${data.overdue.total} open past deadline`;
  $("#overdue tbody").replaceChildren(...data.overdue.tickets.map((t) => el("tr", { class: t.urgent ? "urgent" : "" },
    el("td", { class: "id" }, t.id), el("td", {}, cityName(t.handler)), el("td", {}, catName(t.category)),
    el("td", {}, t.stage || t.status), el("td", {}, new Date(t.due_ms).toLocaleString("zh-CN", { hour12: false })))));
  const sv = data.supervision;
  const rules = Object.entries(sv.open_by_rule).map(([r, n]) => `${r} ${n}`).join(", ");
  $("#supervision-count").textContent = `${sv.open} open${rules ? ` (${rules})` : ""}; ${sv.merged} reports merged in the window`;
  $("#escalations tbody").replaceChildren(...sv.escalations.map((e) => el("tr", { "data-rule": e.rule },
    el("td", { class: "id" }, e.id), el("td", {}, e.rule), el("td", {}, e.reason), el("td", {}, cityName(e.handler)),
    el("td", {}, e.department), el("td", {}, e.tickets), el("td", {}, e.actions))));
  $("#matters").replaceChildren(...sv.top_matters.map((m) => el("li", {},
    `${m.subject} · ${m.location} · ${cityName(m.handler)} · ${m.reports} reports`)));
  $("#top").replaceChildren(...data.cities.map((c) => el("div", { "data-city": c.id },
    el("strong", {}, c.name), el("ol", {}, ...(data.top_month[c.id] || []).map(([cat, n]) => el("li", {}, `${catName(cat)} · ${n}`))))));
}

async function pollEvents() {
  const r = await fetch(`/api/events?after=${state.cursor}`);
  if (!r.ok) throw new Error(`events: HTTP ${r.status}`);
  const { events } = await r.json();
  const list = $("#ticker");
  for (const e of events) {
    state.cursor = Math.max(state.cursor, e.cursor);
    if (!e.type) continue;
    const li = el("li", { class: e.urgent ? "urgent" : "" },
      el("span", {}, clock(e.at_ms), " "),
      el("span", { class: "what" }, e.type === "transfer" ? `call ${e.what}` : e.what),
      `${cityName(e.origin)} → ${cityName(e.target)} · ${catName(e.category)} · `,
      el("code", {}, e.id));
    list.prepend(li);
  }
  while (list.children.length > 60) list.lastChild.remove();
}

async function refresh() {
  try {
    const r = await fetch(`/api/overview?window=${state.window}`);
    if (!r.ok) throw new Error(`overview: HTTP ${r.status}`);
    const data = await r.json();
    for (const c of data.cities) state.names[c.id] = c.name;
    for (const c of data.categories) state.categoryNames[c.id] = c.name;
    $("#period").textContent = data.period || "since start";
    $("#total-flow").textContent = data.flow.reduce((a, f) => a + f.tickets, 0);
    renderCards(data);
    renderMatrix(data);
    renderCategories(data);
    renderLists(data);
    await pollEvents();
    $("#updated").textContent = clock(Date.now());
    $("#status").textContent = "";
    $("#status").className = "status";
  } catch (e) {
    $("#status").textContent = "· " + e.message;
    $("#status").className = "status bad";
  }
}

for (const b of document.querySelectorAll("#windows button")) {
  b.addEventListener("click", () => {
    state.window = b.dataset.window;
    for (const x of document.querySelectorAll("#windows button")) x.classList.toggle("on", x === b);
    refresh();
  });
}
refresh();
setInterval(refresh, 1000);
