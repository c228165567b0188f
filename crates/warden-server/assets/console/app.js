// Warden console (docs/console.md). Plain JavaScript, no build step.
//
// Rules this file keeps:
// - Every value from the server goes into the page as text (`h()` uses
//   text nodes; nothing here assigns innerHTML), so names, descriptions and
//   audit fields full of markup show as text.
// - The credential lives in `session.credential` only: sent as a header,
//   never written to a cookie, localStorage or sessionStorage.
// - Every action is a call to the management API, which checks the
//   caller's permissions; the page only hides what the API would refuse.
"use strict";

(() => {
  const session = { credential: null, me: null, charts: [], timer: null, seq: 0 };
  const $ = (selector) => document.querySelector(selector);

  // ---- DOM helpers ------------------------------------------------------

  /** Creates an element; strings and numbers become text nodes. */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
      else if (key === "class") el.className = value;
      else el.setAttribute(key, value === true ? "" : String(value));
    }
    append(el, children);
    return el;
  }

  function append(el, children) {
    for (const child of [children].flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      el.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }

  function clear(el) {
    while (el.firstChild) el.removeChild(el.firstChild);
  }

  function toast(message) {
    const t = $("#toast");
    t.textContent = message;
    t.classList.add("show");
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => t.classList.remove("show"), 4000);
  }

  const fmtTime = (seconds) =>
    seconds ? new Date(seconds * 1000).toISOString().replace("T", " ").slice(0, 19) + "Z" : "—";
  const fmtMicros = (us) => (us ? fmtTime(Math.floor(us / 1e6)) : "—");
  const fmtNum = (n, digits = 1) =>
    n === null || n === undefined ? "—" : Number(n).toLocaleString("en-US", { maximumFractionDigits: digits });
  const badge = (text, kind) => h("span", { class: `badge ${kind}` }, text);

  function table(caption, headers, rows, empty = "None.") {
    if (!rows.length) return h("p", { class: "empty" }, empty);
    return h(
      "table",
      {},
      h("caption", {}, caption),
      h("thead", {}, h("tr", {}, headers.map((x) => h("th", { scope: "col", class: x.num ? "num" : null }, x.label || x)))),
      h(
        "tbody",
        {},
        rows.map((cells) =>
          h("tr", {}, cells.map((c, i) => h("td", { class: headers[i] && headers[i].num ? "num" : null }, c))),
        ),
      ),
    );
  }

  /** A button that asks for a second click before it acts. */
  function confirmButton(label, action, danger = true) {
    let armed = false;
    let timer = null;
    const button = h("button", { type: "button", class: `small${danger ? " danger" : ""}` }, label);
    button.addEventListener("click", async () => {
      if (!armed) {
        armed = true;
        button.textContent = `Confirm ${label.toLowerCase()}`;
        timer = setTimeout(() => {
          armed = false;
          button.textContent = label;
        }, 5000);
        return;
      }
      clearTimeout(timer);
      button.disabled = true;
      try {
        await action();
      } finally {
        button.disabled = false;
        armed = false;
        button.textContent = label;
      }
    });
    return button;
  }

  /** Shows a secret once, with a copy button. */
  function secretBox(title, secret, note) {
    const code = h("code", { class: "mono", "data-secret": "" }, secret);
    const copy = h("button", { type: "button", class: "small quiet" }, "Copy");
    copy.addEventListener("click", async () => {
      try {
        await navigator.clipboard.writeText(secret);
        toast("Copied to the clipboard.");
      } catch {
        const range = document.createRange();
        range.selectNodeContents(code);
        const selection = window.getSelection();
        selection.removeAllRanges();
        selection.addRange(range);
        toast("Selected: copy it with Ctrl+C.");
      }
    });
    return h(
      "div",
      { class: "secret", role: "alert" },
      h("strong", {}, title),
      code,
      h("div", { class: "actions" }, copy),
      h("p", { class: "hint" }, note || "It is shown only this once: Warden keeps only its hash."),
    );
  }

  // ---- API ----------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, body) {
      super((body && (body.error || body.message)) || `HTTP ${status}`);
      this.status = status;
      this.body = body;
    }
  }

  /** Calls the management API with the session's credential. */
  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    if (session.credential) headers.Authorization = `Bearer ${session.credential}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      credentials: "same-origin",
      redirect: "error",
    });
    let data = null;
    const text = await response.text();
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = { error: text };
    }
    if (response.status === 401 && session.me) {
      signOut("Your credential is no longer accepted (revoked or expired): sign in again.");
      throw new ApiError(401, data);
    }
    if (!response.ok) throw new ApiError(response.status, data);
    return data;
  }

  function explain(err) {
    if (err instanceof ApiError) {
      const code = err.body && err.body.code ? ` (${err.body.code})` : "";
      const fields = err.body && Array.isArray(err.body.details) ? ": " + err.body.details.map((d) => `${d.field || ""} ${d.problem || ""}`.trim()).join("; ") : "";
      return `${err.message}${code}${fields}`;
    }
    return "The server could not be reached.";
  }

  const can = (permission) => !!(session.me && session.me.permissions.includes(permission));

  // ---- Sign-in ------------------------------------------------------------

  async function signIn(credential) {
    session.credential = credential;
    try {
      session.me = await api("GET", "admin/whoami");
    } catch (err) {
      session.credential = null;
      session.me = null;
      throw err;
    }
    $("#signin").hidden = true;
    $("#page").hidden = false;
    $("#nav").hidden = false;
    $("#signout").hidden = false;
    $("#who").textContent = `${session.me.principal} · ${session.me.roles.join(", ")}`;
    for (const link of document.querySelectorAll("#nav a")) {
      link.hidden = !pageAllowed(link.dataset.page);
    }
    const wanted = location.hash.slice(1);
    const first = Object.keys(PAGES).find(pageAllowed);
    if (!first) {
      signOut("This credential holds no management permission.");
      return;
    }
    if (pageAllowed(wanted)) route();
    else if (location.hash === `#${first}`) route();
    else location.hash = `#${first}`;
  }

  function signOut(message) {
    session.credential = null;
    session.me = null;
    session.seq++;
    stopTimers();
    clear($("#page"));
    $("#page").hidden = true;
    $("#nav").hidden = true;
    $("#signout").hidden = true;
    $("#who").textContent = "";
    $("#signin").hidden = false;
    $("#credential").value = "";
    $("#signin-error").textContent = message || "";
    $("#credential").focus();
  }

  const PAGES = {
    overview: { title: "Overview", needs: ["metrics:read"], render: renderOverview },
    models: { title: "Models", needs: ["admin:models"], render: renderModels },
    access: { title: "Access", needs: ["admin:keys", "admin:users"], render: renderAccess },
    audit: { title: "Audit", needs: ["admin:audit"], render: renderAudit },
    abuse: { title: "Abuse", needs: ["admin:keys"], render: renderAbuse },
  };

  function pageAllowed(name) {
    return Object.hasOwn(PAGES, name) && PAGES[name].needs.some(can);
  }

  function stopTimers() {
    clearInterval(session.timer);
    session.timer = null;
    for (const chart of session.charts) chart.destroy();
    session.charts = [];
  }

  async function route() {
    if (!session.me) return;
    const name = location.hash.slice(1) || "overview";
    const page = Object.hasOwn(PAGES, name) ? PAGES[name] : null;
    stopTimers();
    const root = $("#page");
    clear(root);
    for (const link of document.querySelectorAll("#nav a")) {
      if (link.dataset.page === name) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    if (!page || !pageAllowed(name)) {
      append(root, [h("h1", { tabindex: "-1" }, "Not available"), h("p", {}, "This credential may not see this page.")]);
      return;
    }
    const heading = h("h1", { tabindex: "-1" }, page.title);
    const body = h("div", {});
    append(root, [heading, body]);
    document.title = `${page.title} · Warden console`;
    heading.focus();
    const seq = ++session.seq;
    try {
      await page.render(body, () => seq === session.seq);
    } catch (err) {
      if (seq === session.seq && session.me) append(body, h("p", { class: "error", role: "alert" }, explain(err)));
    }
  }

  // ---- Overview -----------------------------------------------------------

  const REFUSAL_COLOURS = ["#a4161a", "#b25e00", "#6a3d9a", "#1f78b4", "#33a02c", "#e7298a", "#666666", "#8c564b"];

  function chart(target, title, series, data, yLabel) {
    const width = Math.max(320, target.clientWidth - 8);
    const opts = {
      title,
      width,
      height: 220,
      series: [{ value: (u, v) => (v === null ? "—" : new Date(v * 1000).toISOString().slice(11, 19)) }, ...series],
      axes: [{}, { label: yLabel, size: 60 }],
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(1, max * 1.1)] } },
      legend: { live: true },
      cursor: { drag: { x: false, y: false } },
    };
    const plot = new uPlot(opts, data, target);
    session.charts.push(plot);
    return plot;
  }

  async function renderOverview(root, current) {
    const stats = h("div", { class: "card" });
    const charts = h("div", { class: "grid" });
    const lower = h("div", { class: "grid" });
    append(root, [stats, charts, lower]);
    const rpsBox = h("div", { class: "card" }, h("div", { class: "chart", id: "chart-requests" }));
    const latBox = h("div", { class: "card" }, h("div", { class: "chart", id: "chart-latency" }));
    const refBox = h("div", { class: "card" }, h("div", { class: "chart", id: "chart-refusals" }));
    append(charts, [rpsBox, latBox, refBox]);
    const models = h("div", { class: "card" });
    const alerts = h("div", { class: "card" });
    append(lower, [models, alerts]);
    let plots = null;
    let codes = "";

    async function refresh() {
      const o = await api("GET", "admin/overview");
      if (!current()) return;
      const s = o.series;
      const last = (xs) => {
        for (let i = xs.length - 1; i >= 0; i--) if (xs[i] !== null) return xs[i];
        return null;
      };
      clear(stats);
      append(stats, [
        h(
          "div",
          { class: "stats" },
          [
            ["requests (15 min)", fmtNum(s.totals.requests, 0), "stat-requests"],
            ["refused (15 min)", fmtNum(s.totals.refused, 0), "stat-refused"],
            ["requests/s (last 10 s)", fmtNum(last(s.requests_per_s)), "stat-rps"],
            ["p99 latency (last 10 s)", last(s.p99_ms) === null ? "—" : `${fmtNum(last(s.p99_ms), 2)} ms`, "stat-p99"],
            ["version", o.version, "stat-version"],
          ].map(([label, value, id]) => h("div", { class: "stat" }, h("div", { class: "value", id }, value), h("div", { class: "label" }, label))),
        ),
      ]);
      const refusalCodes = Object.keys(s.refusals_per_s);
      const data = {
        requests: [s.t, s.requests_per_s],
        latency: [s.t, s.p50_ms, s.p99_ms],
        refusals: [s.t, ...refusalCodes.map((c) => s.refusals_per_s[c])],
      };
      if (!plots || codes !== refusalCodes.join(",")) {
        for (const p of session.charts) p.destroy();
        session.charts = [];
        for (const box of [rpsBox, latBox, refBox]) clear(box.firstChild);
        codes = refusalCodes.join(",");
        plots = {
          requests: chart(rpsBox.firstChild, "Requests per second", [{ label: "requests/s", stroke: "#0b5cad", fill: "rgba(11,92,173,.12)", width: 2 }], data.requests, "req/s"),
          // Points as well as lines: a lone busy 10 s step still shows.
          latency: chart(latBox.firstChild, "Latency (ms)", [
            { label: "p50", stroke: "#1a6b32", width: 2, points: { show: true, size: 5 } },
            { label: "p99", stroke: "#b25e00", width: 2, points: { show: true, size: 5 } },
          ], data.latency, "ms"),
          refusals: chart(
            refBox.firstChild,
            "Refusals per second, by code",
            refusalCodes.length
              ? refusalCodes.map((c, i) => ({ label: c, stroke: REFUSAL_COLOURS[i % REFUSAL_COLOURS.length], width: 2 }))
              : [{ label: "none", stroke: "#999" }],
            refusalCodes.length ? data.refusals : [s.t, s.t.map(() => 0)],
            "per s",
          ),
        };
      } else {
        plots.requests.setData(data.requests);
        plots.latency.setData(data.latency);
        plots.refusals.setData(refusalCodes.length ? data.refusals : [s.t, s.t.map(() => 0)]);
      }
      clear(models);
      append(models, [
        h("h2", {}, "Models"),
        table(
          "Models served and their readiness",
          ["Model", "Versions", "Serving", "State"],
          o.models.map((m) => [
            m.name,
            m.versions.join(", "),
            `v${m.serving}`,
            m.ready ? badge("ready", "ok") : badge(m.gateway ? "upstream down" : "not ready", "bad"),
          ]),
          "No model is loaded.",
        ),
        o.certificates.length
          ? table(
              "Certificates",
              ["Listener", "Expires"],
              o.certificates.map((c) => {
                const days = Math.floor((c.not_after - o.now) / 86400);
                return [c.listener, h("span", {}, `${fmtTime(c.not_after)} `, badge(`${days} days`, days < 14 ? "bad" : days < 30 ? "warn" : "ok"))];
              }),
            )
          : null,
      ]);
      clear(alerts);
      append(alerts, [
        h("h2", {}, "Alerts"),
        table(
          "Alerts raised recently (newest first)",
          ["When", "Alert"],
          o.alerts.map((a) => [fmtTime(a.at), badge(a.alert, "warn")]),
          "No alert raised since the server started.",
        ),
      ]);
    }
    await refresh();
    if (!current()) return;
    clearInterval(session.timer);
    const timer = setInterval(() => {
      if (!current() || !session.me) {
        clearInterval(timer);
        return;
      }
      refresh().catch((err) => {
        if (current() && session.me) toast(explain(err));
      });
    }, 5000);
    session.timer = timer;
  }

  // ---- Models -------------------------------------------------------------

  async function renderModels(root, current) {
    const list = await api("GET", "admin/models");
    if (!current()) return;
    const tabs = h("div", { class: "tabs", role: "group", "aria-label": "Model" });
    const detail = h("div", {});
    append(root, [tabs, detail]);
    const names = list.models.map((m) => m.name).sort();
    if (!names.length) {
      append(detail, h("p", { class: "empty" }, "No model is loaded."));
      return;
    }
    let showing = 0;
    async function show(name) {
      const mine = ++showing;
      for (const b of tabs.children) b.setAttribute("aria-pressed", String(b.dataset.model === name));
      clear(detail);
      const m = await api("GET", `admin/models/${encodeURIComponent(name)}`);
      if (!current() || mine !== showing) return;
      clear(detail);
      const accepts = (a) => {
        if (a === "any") return "any value";
        if (a.range) return `[${a.range[0]}, ${a.range[1]}]`;
        if (a.ids !== undefined) return `ids 0 … ${a.ids - 1}`;
        if (a.categories) return `one of: ${a.categories.join(", ")}`;
        return JSON.stringify(a);
      };
      const reload = h("button", { type: "button" }, "Reload from disk");
      reload.addEventListener("click", async () => {
        reload.disabled = true;
        try {
          const r = await api("POST", `admin/models/${encodeURIComponent(name)}/reload`);
          toast(`${r.name} reloaded: serving v${r.serving}.`);
          await show(name);
        } catch (err) {
          toast(explain(err));
        } finally {
          reload.disabled = false;
        }
      });
      append(detail, [
        h(
          "div",
          { class: "card" },
          h("h2", {}, m.name),
          h("p", { class: "description" }, m.description || "No description."),
          h(
            "p",
            {},
            `Task: ${m.task} · versions ${m.versions.join(", ")} · serving v${m.serving} · at most ${m.max_batch} rows per request`,
            m.gateway ? " · gateway to an upstream" : "",
            m.budget ? ` · budget ${m.budget.per_day ?? "∞"} rows/day, ${m.budget.per_month ?? "∞"} rows/month` : "",
          ),
          h("div", { class: "actions" }, reload),
        ),
        h(
          "div",
          { class: "card" },
          table(
            "Inputs",
            ["Name", "Datatype", "Shape", "Accepts", { label: "Max elements", num: true }],
            m.inputs.map((i) => [
              h("code", {}, i.name),
              i.datatype,
              `[${i.shape.join(", ")}]`,
              i.features.length
                ? h("span", {}, `${i.features.length} features: `, i.features.map((f) => `${f.name}${f.range ? ` [${fmtNum(f.range[0], 3)}, ${fmtNum(f.range[1], 3)}]` : ""}`).join(", "))
                : accepts(i.accepts) + (i.image ? " (image)" : ""),
              fmtNum(i.max_elements, 0),
            ]),
          ),
        ),
        h(
          "div",
          { class: "card" },
          table("Outputs", ["Name", "Datatype", "Shape"], m.outputs.map((o) => [h("code", {}, o.name), o.datatype, `[${o.shape.join(", ")}]`])),
        ),
        h(
          "div",
          { class: "card" },
          table(
            "Output policy per role",
            ["Role", "Probabilities", "Outputs", "Decimals", "Top k", "Confidence ≥", "Noise", "Clamp"],
            m.policies.map((p) => [
              p.role,
              p.probabilities ? "yes" : "no",
              fmtNum(p.outputs, 0),
              fmtNum(p.decimals, 0),
              p.top_k ?? "—",
              p.confidence_threshold ?? "—",
              p.noise ? fmtNum(p.noise, 4) : "none",
              p.clamp ? `[${p.clamp[0]}, ${p.clamp[1]}]` : "—",
            ]),
          ),
        ),
        h(
          "div",
          { class: "card" },
          table(
            "Defenses",
            ["Defense", "Action", { label: "Flagged (15 min)", num: true }],
            m.defenses.map((d) => [
              d.name,
              badge(d.action, d.action === "off" ? "off" : d.action === "reject" ? "ok" : "warn"),
              fmtNum(d.flagged_15m, 0),
            ]),
          ),
        ),
      ]);
    }
    for (const name of names) {
      const b = h("button", { type: "button", "data-model": name, "aria-pressed": "false" }, name);
      b.addEventListener("click", () => show(name).catch((err) => toast(explain(err))));
      tabs.appendChild(b);
    }
    await show(names[0]);
  }

  // ---- Access -------------------------------------------------------------

  async function renderAccess(root, current) {
    const roles = (await api("GET", "admin/roles")).roles;
    if (!current()) return;
    const roleSelect = (id) => h("select", { id, name: "role" }, roles.map((r) => h("option", { value: r.name }, r.name)));
    const sections = [];
    if (can("admin:keys")) sections.push(await keysSection(roleSelect, current));
    if (can("admin:users")) {
      sections.push(await usersSection(roleSelect, current));
      sections.push(await clientsSection(roleSelect, current));
    }
    sections.push(
      h(
        "div",
        { class: "card" },
        h("h2", {}, "Roles"),
        table(
          "Roles and their permissions",
          ["Role", "Description", "Permissions"],
          roles.map((r) => [r.name, r.description || "", h("code", {}, r.permissions.join(" "))]),
        ),
      ),
    );
    if (current()) append(root, sections);
  }

  async function keysSection(roleSelect, current) {
    const box = h("div", { class: "card", id: "keys" });
    const out = h("div", {});
    async function load() {
      const { keys } = await api("GET", "admin/keys");
      if (!current()) return;
      clear(list);
      append(list, [
        table(
          "API keys",
          ["Name", "Id", "Role", "Models", "Status", "Created", "Last used", "Actions"],
          keys.map((k) => [
            k.name,
            h("code", {}, k.id),
            k.role,
            k.models ? k.models.join(", ") : "all",
            badge(k.status, k.status === "active" ? "ok" : "off"),
            fmtTime(k.created_at),
            fmtTime(k.last_used_at),
            k.status === "active"
              ? h(
                  "div",
                  { class: "actions" },
                  confirmButton("Rotate", async () => {
                    try {
                      const r = await api("POST", `admin/keys/${encodeURIComponent(k.id)}/rotate`, { grace: grace.value });
                      clear(out);
                      append(out, secretBox(`New key for “${k.name}” (the old one works for ${grace.value} more):`, r.key));
                      await load();
                    } catch (err) {
                      toast(explain(err));
                    }
                  }, false),
                  confirmButton("Revoke", async () => {
                    try {
                      await api("POST", `admin/keys/${encodeURIComponent(k.id)}/revoke`);
                      toast(`Key ${k.id} revoked.`);
                      await load();
                    } catch (err) {
                      toast(explain(err));
                    }
                  }),
                )
              : "",
          ]),
          "No API key.",
        ),
      ]);
    }
    const list = h("div", {});
    const grace = h("select", { id: "rotate-grace" }, ["10m", "1h", "24h", "0s"].map((g) => h("option", { value: g }, g)));
    const name = h("input", { id: "key-name", name: "name", required: true, maxlength: 64, autocomplete: "off" });
    const models = h("input", { id: "key-models", name: "models", placeholder: "all", autocomplete: "off" });
    const expires = h("input", { id: "key-expires", name: "expires_in", placeholder: "never (e.g. 30d)", autocomplete: "off" });
    const error = h("p", { class: "error", role: "alert" });
    const form = h(
      "form",
      { class: "inline", id: "create-key" },
      h("div", { class: "field" }, h("label", { for: "key-name" }, "Name"), name),
      h("div", { class: "field" }, h("label", { for: "key-role" }, "Role"), roleSelect("key-role")),
      h("div", { class: "field" }, h("label", { for: "key-models" }, "Models (comma-separated)"), models),
      h("div", { class: "field" }, h("label", { for: "key-expires" }, "Expires in"), expires),
      h("button", { type: "submit" }, "Create key"),
    );
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      error.textContent = "";
      const body = { name: name.value.trim(), role: form.querySelector("select").value };
      const m = models.value.split(",").map((x) => x.trim()).filter(Boolean);
      if (m.length) body.models = m;
      if (expires.value.trim()) body.expires_in = expires.value.trim();
      try {
        const r = await api("POST", "admin/keys", body);
        clear(out);
        append(out, secretBox(`New key “${r.name}” (${r.id}):`, r.key));
        form.reset();
        await load();
      } catch (err) {
        error.textContent = explain(err);
      }
    });
    append(box, [
      h("h2", {}, "API keys"),
      form,
      error,
      out,
      h("div", { class: "field" }, h("label", { for: "rotate-grace" }, "Grace period of a rotated key"), grace),
      list,
    ]);
    await load();
    return box;
  }

  async function usersSection(roleSelect, current) {
    const box = h("div", { class: "card", id: "users" });
    const list = h("div", {});
    async function load() {
      const { users } = await api("GET", "admin/users");
      if (!current()) return;
      clear(list);
      append(
        list,
        table(
          "Users (password grant)",
          ["Name", "Role", "Status", "Created", "Actions"],
          users.map((u) => [
            u.name,
            u.role,
            badge(u.status, u.status === "active" ? "ok" : "off"),
            fmtTime(u.created_at),
            u.status === "active"
              ? confirmButton("Disable", async () => {
                  try {
                    await api("POST", `admin/users/${encodeURIComponent(u.name)}/disable`);
                    await load();
                  } catch (err) {
                    toast(explain(err));
                  }
                })
              : "",
          ]),
          "No user.",
        ),
      );
    }
    const name = h("input", { id: "user-name", required: true, maxlength: 64, autocomplete: "off" });
    const password = h("input", { id: "user-password", type: "password", required: true, minlength: 12, autocomplete: "new-password" });
    const error = h("p", { class: "error", role: "alert" });
    const form = h(
      "form",
      { class: "inline" },
      h("div", { class: "field" }, h("label", { for: "user-name" }, "Name"), name),
      h("div", { class: "field" }, h("label", { for: "user-role" }, "Role"), roleSelect("user-role")),
      h("div", { class: "field" }, h("label", { for: "user-password" }, "Password"), password),
      h("button", { type: "submit" }, "Create user"),
    );
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      error.textContent = "";
      try {
        await api("POST", "admin/users", { name: name.value.trim(), role: form.querySelector("select").value, password: password.value });
        form.reset();
        toast("User created.");
        await load();
      } catch (err) {
        error.textContent = explain(err);
      }
    });
    append(box, [h("h2", {}, "Users"), form, error, list]);
    await load();
    return box;
  }

  async function clientsSection(roleSelect, current) {
    const box = h("div", { class: "card", id: "clients" });
    const list = h("div", {});
    const out = h("div", {});
    async function load() {
      const { clients } = await api("GET", "admin/clients");
      if (!current()) return;
      clear(list);
      append(
        list,
        table(
          "OAuth2 clients (client credentials)",
          ["Name", "Client id", "Role", "Status", "Created", "Actions"],
          clients.map((c) => [
            c.name,
            h("code", {}, c.client_id),
            c.role,
            badge(c.status, c.status === "active" ? "ok" : "off"),
            fmtTime(c.created_at),
            c.status === "active"
              ? h(
                  "div",
                  { class: "actions" },
                  confirmButton("Rotate", async () => {
                    try {
                      const r = await api("POST", `admin/clients/${encodeURIComponent(c.client_id)}/rotate`);
                      clear(out);
                      append(out, secretBox(`New secret of client ${c.client_id}:`, r.client_secret));
                    } catch (err) {
                      toast(explain(err));
                    }
                  }, false),
                  confirmButton("Revoke", async () => {
                    try {
                      await api("POST", `admin/clients/${encodeURIComponent(c.client_id)}/revoke`);
                      await load();
                    } catch (err) {
                      toast(explain(err));
                    }
                  }),
                )
              : "",
          ]),
          "No OAuth2 client.",
        ),
      );
    }
    const name = h("input", { id: "client-name", required: true, maxlength: 64, autocomplete: "off" });
    const error = h("p", { class: "error", role: "alert" });
    const form = h(
      "form",
      { class: "inline" },
      h("div", { class: "field" }, h("label", { for: "client-name" }, "Name"), name),
      h("div", { class: "field" }, h("label", { for: "client-role" }, "Role"), roleSelect("client-role")),
      h("button", { type: "submit" }, "Create client"),
    );
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      error.textContent = "";
      try {
        const r = await api("POST", "admin/clients", { name: name.value.trim(), role: form.querySelector("select").value });
        clear(out);
        append(out, secretBox(`Client ${r.client_id} created; its secret:`, r.client_secret));
        form.reset();
        await load();
      } catch (err) {
        error.textContent = explain(err);
      }
    });
    append(box, [h("h2", {}, "OAuth2 clients"), form, error, out, list]);
    await load();
    return box;
  }

  // ---- Audit --------------------------------------------------------------

  async function renderAudit(root, current) {
    const fields = [
      ["principal", "Principal", "key:…, user:…"],
      ["model", "Model", ""],
      ["outcome", "Outcome", "ok, rate_limited …"],
      ["since", "Since", "1h, 24h, RFC 3339"],
      ["until", "Until", ""],
    ];
    const inputs = {};
    const form = h(
      "form",
      { class: "inline", id: "audit-filter" },
      fields.map(([key, label, placeholder]) => {
        inputs[key] = h("input", { id: `audit-${key}`, name: key, placeholder, autocomplete: "off" });
        return h("div", { class: "field" }, h("label", { for: `audit-${key}` }, label), inputs[key]);
      }),
      h("button", { type: "submit" }, "Filter"),
    );
    const verify = h("button", { type: "button", id: "verify-chain" }, "Verify the chain");
    const exportButton = h("button", { type: "button", class: "quiet", id: "export-audit" }, "Export (JSON Lines)");
    const verifyResult = h("div", { class: "verify-result", role: "status" });
    const list = h("div", {});
    const more = h("button", { type: "button", class: "quiet", id: "audit-next", hidden: true }, "Next page");
    append(root, [
      h("div", { class: "card" }, form, h("div", { class: "actions", style: null }, verify, exportButton), verifyResult),
      h("div", { class: "card" }, list, more),
    ]);
    let after = 0;
    let rows = [];
    let loading = 0;
    // The filter in force: read from the fields when "Filter" is pressed,
    // so that "Next page" and "Export" keep to the rows shown.
    let filter = {};
    const readFilter = () => {
      filter = {};
      for (const [key] of fields) if (inputs[key].value.trim()) filter[key] = inputs[key].value.trim();
    };

    const query = (extra) => {
      const q = new URLSearchParams(filter);
      for (const [k, v] of Object.entries(extra)) q.set(k, v);
      return `admin/audit?${q}`;
    };

    function render() {
      clear(list);
      append(
        list,
        table(
          "Audit records (oldest first)",
          ["Seq", "Time", "Principal", "Event", "Model", "Outcome", "Status", "Request id"],
          rows.map((r) => {
            const x = r.record || {};
            const event = x.event || x.action || (x.route ? `${x.method || ""} ${x.route}` : "");
            return [
              String(r.seq),
              fmtMicros(x.time_us),
              x.principal || "—",
              event,
              x.model ? `${x.model}${x.version ? ` v${x.version}` : ""}` : "—",
              x.outcome ? badge(x.outcome, x.outcome === "ok" ? "ok" : "warn") : "—",
              x.status ?? "—",
              x.request_id ? h("code", {}, x.request_id) : "—",
            ];
          }),
          "No record matches.",
        ),
      );
    }

    async function load(reset) {
      const mine = ++loading;
      more.disabled = true;
      try {
        const page = await api("GET", query({ after: String(reset ? 0 : after), limit: "100" }));
        if (!current() || mine !== loading) return;
        rows = reset ? page.records : rows.concat(page.records);
        render();
        more.hidden = page.next === null;
        if (page.next !== null) after = page.next;
      } finally {
        if (mine === loading) more.disabled = false;
      }
    }

    form.addEventListener("submit", (e) => {
      e.preventDefault();
      readFilter();
      load(true).catch((err) => toast(explain(err)));
    });
    more.addEventListener("click", () => load(false).catch((err) => toast(explain(err))));
    verify.addEventListener("click", async () => {
      verify.disabled = true;
      clear(verifyResult);
      append(verifyResult, h("p", {}, "Verifying every record …"));
      try {
        const v = await api("GET", "admin/audit/verify");
        clear(verifyResult);
        append(verifyResult, [
          h("p", { id: "verify-summary" }, v.ok ? badge("chain intact", "ok") : badge("TAMPERED", "bad")),
          table(
            "Chains",
            ["Replica", "Result", { label: "Records", num: true }, "Detail"],
            v.chains.map((c) => [
              c.replica,
              c.ok ? badge("verified", "ok") : badge("bad record", "bad"),
              c.ok ? fmtNum(c.records, 0) : "—",
              c.ok
                ? `sequence ${c.from} to ${c.last_seq}${c.pruned_through ? ` (1 to ${c.pruned_through} pruned behind a signed anchor)` : ""}`
                : `first bad record at sequence ${c.first_bad.seq}: ${c.first_bad.problem.replace("_", " ")}`,
            ]),
            "No audit record yet.",
          ),
        ]);
      } catch (err) {
        clear(verifyResult);
        append(verifyResult, h("p", { class: "error" }, explain(err)));
      } finally {
        verify.disabled = false;
      }
    });
    exportButton.addEventListener("click", async () => {
      // Up to 10 pages of 1,000 (the API's largest page); `warden audit
      // export` on the server has no cap.
      exportButton.disabled = true;
      try {
        let cursor = 0;
        const lines = [];
        for (let i = 0; i < 10; i++) {
          const page = await api("GET", query({ after: String(cursor), limit: "1000" }));
          for (const r of page.records) lines.push(JSON.stringify(r));
          if (page.next === null) break;
          cursor = page.next;
        }
        const capped = lines.length >= 10000;
        const blob = new Blob([lines.join("\n") + "\n"], { type: "application/x-ndjson" });
        const link = h("a", { href: URL.createObjectURL(blob), download: `warden-audit-${Date.now()}.jsonl` });
        document.body.appendChild(link);
        link.click();
        link.remove();
        toast(
          capped
            ? `Exported the first ${lines.length} records (the console's cap; warden audit export has none).`
            : `Exported ${lines.length} records.`,
        );
      } catch (err) {
        toast(explain(err));
      } finally {
        exportButton.disabled = false;
      }
    });
    await load(true);
  }

  // ---- Abuse --------------------------------------------------------------

  async function renderAbuse(root, current) {
    const bansBox = h("div", { class: "card", id: "bans" });
    const quotaBox = h("div", { class: "card", id: "quotas" });
    append(root, [bansBox, quotaBox]);
    async function loadBans() {
      const { bans } = await api("GET", "admin/bans");
      if (!current()) return;
      clear(bansBox);
      append(bansBox, [
        h("h2", {}, "Bans"),
        table(
          "Addresses and accounts banned after repeated failures",
          ["Subject", { label: "Seconds left", num: true }, { label: "Level", num: true }, "Actions"],
          bans.map((b) => [
            h("code", {}, b.subject),
            fmtNum(b.seconds_left, 0),
            fmtNum(b.level, 0),
            confirmButton("Lift", async () => {
              try {
                await api("POST", `admin/bans/${encodeURIComponent(b.subject)}/lift`);
                toast(`Ban on ${b.subject} lifted.`);
                await loadBans();
              } catch (err) {
                toast(explain(err));
              }
            }, false),
          ]),
          "No ban in force.",
        ),
      ]);
    }
    await loadBans();
    // Quota usage of the first 50 active credentials (one call each).
    const targets = [];
    const { keys } = await api("GET", "admin/keys");
    for (const k of keys.filter((k) => k.status === "active")) targets.push([`key ${k.name}`, `admin/keys/${encodeURIComponent(k.id)}/quota`]);
    if (can("admin:users")) {
      const { users } = await api("GET", "admin/users");
      for (const u of users.filter((u) => u.status === "active")) targets.push([`user ${u.name}`, `admin/users/${encodeURIComponent(u.name)}/quota`]);
      const { clients } = await api("GET", "admin/clients");
      for (const c of clients.filter((c) => c.status === "active")) targets.push([`client ${c.name}`, `admin/clients/${encodeURIComponent(c.client_id)}/quota`]);
    }
    const rows = [];
    for (const [label, path] of targets.slice(0, 50)) {
      const q = await api("GET", path);
      for (const u of q.quotas) {
        const share = u.limit ? u.used / u.limit : 0;
        rows.push([
          h("span", {}, label, " ", h("code", {}, q.principal)),
          u.model,
          u.window,
          h("span", {}, `${fmtNum(u.used, 0)} / ${fmtNum(u.limit, 0)} `, badge(`${Math.round(share * 100)}%`, share >= 1 ? "bad" : share >= 0.8 ? "warn" : "ok")),
          `${fmtNum(u.resets_in, 0)} s`,
        ]);
      }
    }
    if (!current()) return;
    append(quotaBox, [
      h("h2", {}, "Quota usage"),
      table("Rows used per credential and model", ["Credential", "Model", "Window", "Used", "Resets in"], rows, "No quota or budget applies to an active credential."),
      targets.length > 50 ? h("p", { class: "hint" }, `Showing the first 50 of ${targets.length} credentials.`) : null,
    ]);
  }

  // ---- Start --------------------------------------------------------------

  $("#signin-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const credential = $("#credential").value.trim();
    $("#signin-error").textContent = "";
    if (!credential) return;
    try {
      await signIn(credential);
      $("#credential").value = "";
    } catch (err) {
      $("#signin-error").textContent =
        err instanceof ApiError && (err.status === 401 || err.status === 403)
          ? "This credential is not accepted here."
          : explain(err);
    }
  });
  $("#signout").addEventListener("click", () => signOut("Signed out."));
  window.addEventListener("hashchange", () => route());
  // "Skip to content" moves the focus; it is not a page.
  $(".skip").addEventListener("click", (e) => {
    e.preventDefault();
    $("#main").focus();
  });

  // A client certificate the management listener accepts signs in without
  // a key; asked for by a button, not at every page load, since a call
  // without a credential counts towards the address's ban.
  $("#signin-certificate").addEventListener("click", async () => {
    $("#signin-error").textContent = "";
    try {
      await signIn(null);
    } catch (err) {
      $("#signin-error").textContent =
        err instanceof ApiError && (err.status === 401 || err.status === 403)
          ? "No client certificate was accepted: sign in with a key."
          : explain(err);
    }
  });
  // The form works once this script runs (before, it cannot submit).
  for (const b of document.querySelectorAll("#signin button")) b.disabled = false;
  $("#credential").focus();
})();
