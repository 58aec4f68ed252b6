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
  let autoPicked = false; // the last entry of picks was filled in by the page, not picked
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
    let res;
    try {
      res = await fetch(path, init);
    } catch (e) { // the server cannot be reached: nothing was saved, and the labeller must know it
      const error = new Error(body !== undefined
        ? "Not saved: the server cannot be reached. Check your connection and retry."
        : "The server cannot be reached: retry in a moment.");
      error.status = 0;
      throw error;
    }
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
    $("who").textContent = state.labeller + (state.role === "reviewer" ? " (reviewer)" : "");
    $("logout").hidden = !state.signed_in;
    $("guidelines-link").hidden = !state.guidelines;
    $("progress").textContent = `${p.prompts_done} / ${p.prompts} prompts done · you answered ${p.yours}`;
    $("progress").title = `${p.done} of ${p.items} responses have their labels; ${p.pending} pending`;
    $("tie").hidden = !state.options.tie;
    $("all-bad").hidden = !state.options.all_bad;
    $("rationale-box").hidden = !state.options.rationale;
    $("rationale").maxLength = state.options.max_rationale_chars;
    $("review").hidden = state.role !== "reviewer";
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
    autoPicked = false;
    ends = { best: null, worst: null };
    selected = 0;
    $("rationale").value = "";
    $("task").dataset.id = task.id;
    window.scrollTo(0, 0); // the new prompt, not the middle of the new answers
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
          type: "range", min: low, max: high, step: 1, value: Math.round((low + high) / 2), class: "unset",
          "aria-label": "score of response " + (i + 1),
        });
        // "input" misses a click where the (hidden) thumb already sits: "click" and "change" register it too
        const given = () => { scores[c.key] = Number(input.value); selected = i; update(); };
        for (const type of ["input", "change", "click"]) input.addEventListener(type, given);
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
        input.classList.toggle("unset", !set);
        if (set) input.value = String(scores[c.key]);
        badge.textContent = set ? `${scores[c.key]} / ${state.scale[1]}` : "";
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
    $("skip").disabled = $("tie").disabled = $("all-bad").disabled = busy || !list.length;
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
      const pace = counts[name].median_seconds_per_item;
      const cells = [name, counts[name].answered, counts[name].skipped, pace === null || pace === undefined ? "–" : pace.toFixed(1),
        fmt(stats.mean_abs_diff), fmt(stats.alpha_without)];
      for (const cell of cells) {
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
    const extra = (state.options.tie ? "; T: all equally good" : "") + (state.options.all_bad ? "; B: all bad" : "");
    $("keys").textContent = `Shortcuts — ${what}; Enter: submit; S: skip / cannot judge${extra}; U: undo your last answer.`;
  }

  // ------------------------------------------------------------------------------------------------ actions

  function pick(i) {
    const list = candidates();
    const key = list[i] && list[i].key;
    if (!key || picks.includes(key)) return;
    picks.push(key);
    autoPicked = false;
    if (picks.length === list.length - 1) {
      picks.push(list.find((c) => !picks.includes(c.key)).key);
      autoPicked = true;
    }
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
    else if (state.question === "ranking") {
      if (autoPicked) picks.pop(); // the page's own fill-in goes with the labeller's last pick
      picks.pop();
      autoPicked = false;
    }
    else if (ends.worst) ends.worst = null;
    else ends.best = null;
    update();
  }

  function withRationale(answer) {
    const text = $("rationale").value.trim();
    if (state.options.rationale && text) answer.rationale = text;
    return answer;
  }

  function body() {
    const id = state.task.id;
    if (state.question === "score") return withRationale({ task: id, scores });
    if (state.question === "ranking") return withRationale({ task: id, ranking: picks });
    const list = candidates();
    return withRationale({ task: id, best: ends.best, worst: list.length === 1 ? ends.best : ends.worst });
  }

  function missing() {
    const list = candidates();
    if (state.question === "score") {
      const left = list.map((c, i) => (c.key in scores ? 0 : i + 1)).filter((n) => n);
      return `Not submitted: score every response first (missing: response ${left.join(", ")}).`;
    }
    if (state.question === "ranking") return `Not submitted: rank every response first (${list.length - picks.length} left).`;
    return "Not submitted: pick the best and the worst response first.";
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

  function submit() {
    if (!state || !state.task) return;
    if (!complete()) { say(missing()); return; }
    send("api/answer", body(), "Saved.");
  }
  function skip() { if (state && state.task) send("api/answer", withRationale({ task: state.task.id, skip: true }), "Skipped."); }
  function whole(flag, done) {
    if (state && state.task && state.options[flag]) send("api/answer", withRationale({ task: state.task.id, [flag]: true }), done);
  }
  function undo() { if (state && state.can_undo) send("api/undo", {}, "Your last answer was taken back: answer it again."); }

  async function load() { render(await call("api/state")); }

  // ------------------------------------------------------------------------------------------------ review

  function renderReview(data) {
    const box = $("review-items");
    box.replaceChildren();
    $("review-note").textContent = data.items.length
      ? (data.require_review ? "Every finished item needs your review before a run reads it. " : "Items the labellers disagree on. ") +
        "Largest disagreement first."
      : "Nothing to review.";
    data.items.forEach((item, i) => {
      const card = el("div", { class: "review-item", "data-key": item.key, id: "review-" + (i + 1) });
      const labels = item.labels.map((l) => `${l.labeller}: ${l.score === null ? "skip" : l.score}` +
        (l.rationale ? ` (“${l.rationale}”)` : "")).join(" · ");
      const verdict = item.review ? `${item.review.decision} by ${item.review.reviewer}` +
        (item.review.score !== null ? ` → ${item.review.score}` : "") : "not reviewed";
      const prompt = el("div", { class: "md review-prompt" });
      prompt.innerHTML = item.prompt_html; // server-rendered Markdown, raw HTML escaped
      const answer = el("div", { class: "md" });
      answer.innerHTML = item.html; // server-rendered Markdown, raw HTML escaped
      const score = el("input", { type: "number", step: "any", class: "override-score", "aria-label": "override score" });
      const accept = el("button", { type: "button", class: "accept" }, "Accept");
      const override = el("button", { type: "button", class: "override" }, "Override");
      accept.addEventListener("click", () => review(item.key, "accept"));
      override.addEventListener("click", () => review(item.key, "override", Number(score.value)));
      const row = el("div", { class: "picks" });
      row.append(accept, score, override);
      card.append(prompt, answer, el("p", { class: "labels" }, labels), el("p", { class: "verdict" }, verdict), row);
      box.append(card);
    });
  }

  async function loadReview() { renderReview(await call("api/review")); }

  async function review(key, decision, score) {
    try {
      renderReview(await call("api/review", decision === "override" ? { key, decision, score } : { key, decision }));
      say("Review saved.", true);
    } catch (error) {
      say(error.message);
    }
  }

  document.addEventListener("keydown", (ev) => {
    if (ev.ctrlKey || ev.metaKey || ev.altKey || !state) return;
    const target = ev.target;
    const onRange = target instanceof HTMLInputElement && target.type === "range";
    if ((target instanceof HTMLInputElement && !onRange) || target instanceof HTMLTextAreaElement) return;
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
    } else if ((ev.key === "t" || ev.key === "T") && state.options.tie) {
      ev.preventDefault();
      whole("tie", "Saved: all equally good.");
    } else if ((ev.key === "b" || ev.key === "B") && state.options.all_bad) {
      ev.preventDefault();
      whole("all_bad", "Saved: all bad.");
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
  $("tie").addEventListener("click", () => whole("tie", "Saved: all equally good."));
  $("all-bad").addEventListener("click", () => whole("all_bad", "Saved: all bad."));
  $("review").addEventListener("toggle", () => { if ($("review").open) loadReview().catch((e) => say(e.message)); });
  $("clear").addEventListener("click", () => { scores = {}; picks = []; autoPicked = false; ends = { best: null, worst: null }; update(); });
  $("undo").addEventListener("click", undo);
  $("undo-finished").addEventListener("click", undo);
  load().catch((error) => say(error.message));
})();
