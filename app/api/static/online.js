// Live chart of the online evaluation (GET /stats/online): HR@k per bundle and variant, polled.
"use strict";

(() => {
  const POLL_MS = 5000;
  const KEEP = 120; // points per line (10 minutes at 5 s)
  const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf"];
  const series = new Map(); // "bundle|variant" -> [{t, hr}]
  const el = (id) => document.getElementById(id);

  function svgEl(tag, attrs) {
    const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    return e;
  }

  function draw() {
    const svg = el("online-chart");
    const W = 560, H = 180, P = 30;
    svg.replaceChildren();
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    const all = [...series.values()].flat();
    if (!all.length) return;
    const t0 = Math.min(...all.map((p) => p.t)), t1 = Math.max(...all.map((p) => p.t), t0 + 1);
    const top = Math.max(0.05, ...all.map((p) => p.hr)) * 1.1;
    const x = (t) => P + ((t - t0) / (t1 - t0)) * (W - 2 * P);
    const y = (v) => H - P - (v / top) * (H - 2 * P);
    svg.append(svgEl("line", { x1: P, y1: H - P, x2: W - P, y2: H - P, stroke: "#999" }));
    svg.append(svgEl("line", { x1: P, y1: P, x2: P, y2: H - P, stroke: "#999" }));
    const label = svgEl("text", { x: 2, y: P - 8, "font-size": 10 });
    label.textContent = `HR@k (max ${top.toFixed(3)})`;
    svg.append(label);
    let i = 0;
    for (const [name, pts] of series) {
      const color = COLORS[i % COLORS.length];
      const d = pts.map((p, j) => `${j ? "L" : "M"}${x(p.t).toFixed(1)},${y(p.hr).toFixed(1)}`).join(" ");
      svg.append(svgEl("path", { d, fill: "none", stroke: color, "stroke-width": 2 }));
      const key = svgEl("text", { x: W - P - 200, y: P + 12 * i, "font-size": 10, fill: color });
      key.textContent = name;
      svg.append(key);
      i += 1;
    }
  }

  function table(body) {
    const rows = body.variants.map((v) => {
      const ci = v.hit_rate_ci95 ? ` [${v.hit_rate_ci95.map((x) => x.toFixed(3)).join(", ")}]` : "";
      const f = (x) => (x === null ? "–" : x.toFixed(3));
      return `<tr><td>${v.bundle}</td><td>${v.variant}</td><td>${v.served}</td><td>${v.scored}</td>` +
        `<td>${f(v.hit_rate)}${ci}</td><td>${f(v.ndcg)}</td><td>${f(v.mrr)}</td><td>${f(v.coverage)}</td></tr>`;
    });
    el("online-table").innerHTML =
      "<tr><th>bundle</th><th>variant</th><th>served</th><th>scored</th><th>HR@" + body.k +
      " [95%]</th><th>NDCG</th><th>MRR</th><th>coverage</th></tr>" + rows.join("");
    el("online-note").textContent =
      `last ${body.window_minutes} min · ${body.unserved_events} events without a served list` +
      (body.experiment ? ` · experiment ${body.experiment}` : "");
  }

  async function poll() {
    try {
      const res = await fetch(`/stats/online?minutes=${el("online-window").value || 60}`);
      if (!res.ok) { el("online-note").textContent = `online stats unavailable (${res.status})`; return; }
      const body = await res.json();
      const now = Date.now() / 1000;
      for (const v of body.variants) {
        if (v.hit_rate === null) continue;
        const name = `${v.bundle} | ${v.variant}`;
        const pts = series.get(name) || [];
        pts.push({ t: now, hr: v.hit_rate });
        series.set(name, pts.slice(-KEEP));
      }
      table(body);
      draw();
    } catch (_) {
      el("online-note").textContent = "online stats unreachable";
    }
  }

  window.addEventListener("load", () => {
    if (!el("online-chart")) return;
    poll();
    setInterval(poll, POLL_MS);
  });
})();
