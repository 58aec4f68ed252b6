// The labelling page (aepo_trainer/labelling). No framework, no third-party code, no inline script (the CSP forbids
// it). Prompt and candidate HTML come from the server's Markdown renderer, which escapes every raw HTML tag of the
// completions; everything else is inserted as text. The page holds no state worth keeping: every answer is
// committed on the server before the next task is shown, so a reload (or a crash) loses nothing.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  let state = null; // the last /api/state answer
  let taskId = null; // the task on screen
  let scores = {}; // key -> score (question "score")
  let picks = []; // keys in the order picked, best first (question "ranking")
  let ends = { best: null, worst: null }; // question "best_worst"
  let selected = 0; // highlighted candidate
  let busy = false;
  let poll = null;
  let renders = 0;

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  async function call(path, body) {
    const init = { credentials: "same-origin", headers: {} };
    if (body !== undefined) {
      init.method = "POST";
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const res = await fetch(path, init);
    let data = null;
    try { data = await res.json(); } catch (e) { data = null; }
    if (res.status === 401) { window.location.reload(); throw new Error("please sign in again"); }
    if (!res.ok) {
      const error = new Error((data && data.detail) || res.statusText);
      error.status = res.status;
      throw error;
    }
    return data;
  }

  function say(text, ok) {
    const message = $("message");
    message.textContent = text || "";
    message.className = ok ? "ok" : "";
  }

  function candidates() { return state && state.task ? state.task.candidates : []; }

  // ------------------------------------------------------------------------------------------------ rendering

  function render(next) {
    state = next;
    const p = state.progress;
    $("who").textContent = "labelling as " + state.labeller;
    $("logout").hidden = !state.signed_in;
    $("progress").textContent = `${p.done} / ${p.items} items done · ${p.pending} pending · you answered ${p.yours}`;
    $("instructions").textContent = state.instructions;
    $("undo").disabled = $("undo-finished").disabled = !state.can_undo;
    renderStats();
    renderKeys();
    const task = state.task;
    $("task").hidden = !task;
    $("finished").hidden = !!task;
    if (!task) {
      taskId = null;
      if (!poll) poll = window.setInterval(() => load().catch((e) => say(e.message)), 30000);
    } else {
      if (poll) { window.clearInterval(poll); poll = null; }
      const id = task.id + ":" + task.candidates.map((c) => c.key).join(",");
      if (id !== taskId) renderTask(task, id);
    }
    update();
    document.body.dataset.renders = String(++renders);
  }

  function renderTask(task, id) {
    taskId = id;
    scores = {};
    picks = [];
    ends = { best: null, worst: null };
    selected = 0;
    $("task").dataset.id = task.id;
    $("prompt").innerHTML = task.prompt_html; // server-rendered Markdown, raw HTML escaped
    const box = $("candidates");
    box.replaceChildren();
    const [low, high] = state.scale;
    task.candidates.forEach((c, i) => {
      const card = el("div", { class: "card", "data-key": c.key, id: "candidate-" + (i + 1) });
      const head = el("h3");
      head.append(el("span", {}, "Response " + (i + 1)), el("span", { class: "badge" }));
      const body = el("div", { class: "md" });
      body.innerHTML = c.html; // server-rendered Markdown, raw HTML escaped
      card.append(head, body);
      if (state.question === "score") {
        const rate = el("div", { class: "rate" });
        const input = el("input", {
          type: "range", min: low, max: high, step: 1, value: Math.round((low + high) / 2),
          "aria-label": "score of response " + (i + 1),
        });
        input.addEventListener("input", () => { scores[c.key] = Number(input.value); selected = i; update(); });
        rate.append(el("span", {}, String(low)), input, el("span", {}, String(high)), el("output", { class: "unset" }, "–"));
        card.append(rate);
      } else if (state.question === "ranking") {
        const row = el("div", { class: "picks" });
        const button = el("button", { type: "button", class: "pick" }, "Next best (" + (i + 1) + ")");
        button.addEventListener("click", (ev) => { ev.stopPropagation(); pick(i); });
        row.append(button);
        card.append(row);
      } else {
        const row = el("div", { class: "picks" });
        for (const which of ["best", "worst"]) {
          const button = el("button", { type: "button", class: which }, which === "best" ? "Best" : "Worst");
          button.addEventListener("click", (ev) => { ev.stopPropagation(); chooseEnd(i, which); });
          row.append(button);
        }
        card.append(row);
      }
      card.addEventListener("click", () => { selected = i; update(); });
      box.append(card);
    });
  }

  function update() {
    const list = candidates();
    list.forEach((c, i) => {
      const card = $("candidate-" + (i + 1));
      if (!card) return;
      card.classList.toggle("selected", i === selected);
      const badge = card.querySelector(".badge");
      if (state.question === "score") {
        const output = card.querySelector("output");
        const input = card.querySelector("input");
        const set = c.key in scores;
        output.textContent = set ? String(scores[c.key]) : "–";
        output.classList.toggle("unset", !set);
        if (set) input.value = String(scores[c.key]);
        badge.textContent = "";
      } else if (state.question === "ranking") {
        const rank = picks.indexOf(c.key);
        badge.textContent = rank >= 0 ? "#" + (rank + 1) : "";
        card.classList.toggle("picked", rank >= 0);
      } else {
        const end = ends.best === c.key ? "best" : ends.worst === c.key ? "worst" : "";
        badge.textContent = end;
        card.querySelector("button.best").classList.toggle("on", end === "best");
        card.querySelector("button.worst").classList.toggle("on", end === "worst");
        card.classList.toggle("picked", end !== "");
      }
    });
    $("submit").disabled = busy || !complete();
    $("skip").disabled = busy || !list.length;
  }

  function complete() {
    const list = candidates();
    if (!list.length) return false;
    if (state.question === "score") return list.every((c) => c.key in scores);
    if (state.question === "ranking") return picks.length === list.length;
    return list.length === 1 ? !!ends.best : !!(ends.best && ends.worst);
  }

  function renderStats() {
    const a = state.agreement;
    const alpha = a.alpha === null ? "not defined yet (needs items answered by two labellers, with some variation)" : a.alpha.toFixed(3);
    $("agreement").textContent = `Krippendorff's alpha over all labellers: ${alpha} (${a.items} items answered by two or more; ` +
      `${state.labels_per_item} answer(s) per item).`;
    const body = $("labellers").querySelector("tbody");
    body.replaceChildren();
    const counts = state.progress.labellers;
    for (const name of Object.keys(counts).sort()) {
      const stats = a.labellers[name] || {};
      const fmt = (x) => (x === null || x === undefined ? "–" : x.toFixed(3));
      const row = el("tr");
      for (const cell of [name, counts[name].answered, counts[name].skipped, fmt(stats.mean_abs_diff), fmt(stats.alpha_without)]) {
        row.append(el("td", {}, String(cell)));
      }
      body.append(row);
    }
  }

  function renderKeys() {
    const what = {
      score: `1–9, 0 (=10): score the highlighted response and move to the next; ←/→ highlight; Backspace: clear its score`,
      ranking: "1–9: pick the next best response; Backspace: take back the last pick",
      best_worst: "1–9: pick the best, then the worst response; Backspace: take back the last pick",
    }[state.question];
    $("keys").textContent = `Shortcuts — ${what}; Enter: submit; S: skip / cannot judge; U: undo your last answer.`;
  }

  // ------------------------------------------------------------------------------------------------ actions

  function pick(i) {
    const list = candidates();
    const key = list[i] && list[i].key;
    if (!key || picks.includes(key)) return;
    picks.push(key);
    if (picks.length === list.length - 1) picks.push(list.find((c) => !picks.includes(c.key)).key);
    selected = i;
    update();
  }

  function chooseEnd(i, which) {
    const key = candidates()[i].key;
    const other = which === "best" ? "worst" : "best";
    if (ends[other] === key) ends[other] = null;
    ends[which] = key;
    selected = i;
    update();
  }

  function pickEndByKey(i) {
    const list = candidates();
    if (!list[i]) return;
    if (!ends.best) chooseEnd(i, "best");
    else if (!ends.worst && list[i].key !== ends.best) chooseEnd(i, "worst");
  }

  function clearLast() {
    if (state.question === "score") delete scores[candidates()[selected].key];
    else if (state.question === "ranking") picks.pop();
    else if (ends.worst) ends.worst = null;
    else ends.best = null;
    update();
  }

  function body() {
    const id = state.task.id;
    if (state.question === "score") return { task: id, scores };
    if (state.question === "ranking") return { task: id, ranking: picks };
    const list = candidates();
    return { task: id, best: ends.best, worst: list.length === 1 ? ends.best : ends.worst };
  }

  async function send(path, payload, done) {
    if (busy) return;
    busy = true;
    update();
    try {
      render(await call(path, payload));
      say(done, true);
    } catch (error) {
      say(error.message);
      if (error.status === 409) await load();
    } finally {
      busy = false;
      if (state) update();
    }
  }

  function submit() { if (state && state.task && complete()) send("api/answer", body(), "Saved."); }
  function skip() { if (state && state.task) send("api/answer", { task: state.task.id, skip: true }, "Skipped."); }
  function undo() { if (state && state.can_undo) send("api/undo", {}, "Your last answer was taken back: answer it again."); }

  async function load() { render(await call("api/state")); }

  document.addEventListener("keydown", (ev) => {
    if (ev.ctrlKey || ev.metaKey || ev.altKey || !state) return;
    const target = ev.target;
    const onRange = target instanceof HTMLInputElement && target.type === "range";
    if (target instanceof HTMLInputElement && !onRange) return;
    const list = candidates();
    if (/^[0-9]$/.test(ev.key) && list.length) {
      const n = ev.key === "0" ? 10 : Number(ev.key);
      if (state.question === "score") {
        if (n < state.scale[0] || n > state.scale[1]) return;
        scores[list[selected].key] = n;
        selected = Math.min(selected + 1, list.length - 1);
        update();
      } else if (state.question === "ranking") {
        pick(n - 1);
      } else {
        pickEndByKey(n - 1);
      }
      ev.preventDefault();
    } else if (ev.key === "Enter") {
      if (target instanceof HTMLButtonElement) return; // the button's own click
      ev.preventDefault();
      submit();
    } else if (ev.key === "s" || ev.key === "S") {
      ev.preventDefault();
      skip();
    } else if (ev.key === "u" || ev.key === "U") {
      ev.preventDefault();
      undo();
    } else if (ev.key === "Backspace" && list.length) {
      ev.preventDefault();
      clearLast();
    } else if ((ev.key === "ArrowLeft" || ev.key === "ArrowRight") && !onRange && list.length) {
      ev.preventDefault();
      selected = (selected + (ev.key === "ArrowRight" ? 1 : list.length - 1)) % list.length;
      update();
    }
  });

  $("submit").addEventListener("click", submit);
  $("skip").addEventListener("click", skip);
  $("clear").addEventListener("click", () => { scores = {}; picks = []; ends = { best: null, worst: null }; update(); });
  $("undo").addEventListener("click", undo);
  $("undo-finished").addEventListener("click", undo);
  load().catch((error) => say(error.message));
})();
