"""Money spent on LLM API calls, tracked like labels: a price table and the `usage` ledger of the annotation store.

Discipline (the same as the annotation budget's): before a call, an *upper bound* of its cost is reserved in one
`BEGIN IMMEDIATE` transaction that also checks `annotation_cost_budget`; after the call the reservation is settled
with the usage the server reports, and the response is written in the same transaction — so a completed call is in
the store before anything uses it, and a rerun after a crash finds it there instead of paying again.

Attempt outcomes, as recorded in `usage.status`:

* `done` — the server answered 200 with usage: `cost` = price × reported tokens; the response is kept (the cache).
* `failed` — the server answered an HTTP error (429, 5xx, 4xx): providers do not bill these; `cost` = 0.
* `unknown` — timeout, dropped connection, a 200 whose body is not valid JSON, or a process killed mid-call: the
  server may have billed it and we cannot know, so the reserved upper bound stays charged (`cost` = `reserved_cost`).
  Conservative on purpose: the budget is never exceeded because of a call whose bill we did not see.
* `reserved` — in flight. A reservation whose process is gone (same host) or older than the lease (other hosts) is
  turned into `unknown` the next time anyone reserves.

Spent = Σ cost of done + unknown rows + Σ reserved_cost of live reservations.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
import uuid
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path

from .._utils.hashing import canonical_json
from ..errors import storage_guard
from .annotations import AnnotationStore, BudgetExhausted, pid_alive

__all__ = ["CostBudgetExhausted", "PriceTable", "UsageLedger"]

_HOST = socket.gethostname()


class CostBudgetExhausted(BudgetExhausted):
    """`annotation_cost_budget` (dollars) cannot cover the next call's upper-bound cost; nothing more is sent.

    `partial_scores` (set by annotators): per request, its scores when every call it needed was obtained, else None.
    """

    def __init__(self, message: str, *, spent: float, budget: float, run_id: str, partial_scores=None):
        super().__init__(message, spent=spent, budget=budget, run_id=run_id)
        self.partial_scores = partial_scores


class PriceTable:
    """Dollars per million tokens, per model: `{"gpt-4o-mini": {"input": 0.15, "output": 0.60}, "*": [0, 0]}`.

    Accepts a mapping (values `{"input": .., "output": ..}` or `[input, output]`), a JSON string, or the path of a
    JSON/YAML file holding one. The key `"*"` prices every model not listed. A model with no price costs nothing
    (a self-served `vllm serve`), but a cost budget with an unpriced model is refused up front (`require`).
    """

    def __init__(self, table: Mapping | str | os.PathLike | None = None):
        self.table: dict[str, tuple[float, float]] = {}
        if table is None or (isinstance(table, str) and not table.strip()):
            return
        if isinstance(table, (str, os.PathLike)):
            table = _load_table(table)
        if not isinstance(table, Mapping):
            raise ValueError(f"The price table must be a mapping model -> prices, got {type(table).__name__}.")
        for model, price in table.items():
            if isinstance(price, Mapping):
                unknown = set(price) - {"input", "output"}
                if unknown or not {"input", "output"} <= set(price):
                    raise ValueError(
                        f"Price of {model!r}: expected the keys 'input' and 'output' ($ per 1M tokens), got "
                        f"{sorted(price)}."
                    )
                pair = (price["input"], price["output"])
            elif isinstance(price, (list, tuple)) and len(price) == 2:
                pair = tuple(price)
            else:
                raise ValueError(
                    f"Price of {model!r}: expected {{'input': $, 'output': $}} or [input, output] per 1M tokens, "
                    f"got {price!r}."
                )
            try:
                values = (float(pair[0]), float(pair[1]))
            except (TypeError, ValueError):
                raise ValueError(f"Price of {model!r}: {pair!r} are not numbers.") from None
            if not all(math.isfinite(v) and v >= 0 for v in values):
                raise ValueError(f"Price of {model!r}: prices must be finite and >= 0, got {values!r}.")
            self.table[str(model)] = values

    def price(self, model: str) -> tuple[float, float] | None:
        """(input, output) $ per 1M tokens of `model`, or None when neither it nor `"*"` is listed."""
        return self.table.get(model, self.table.get("*"))

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float:
        """Dollars for a call (0 for an unpriced model)."""
        price = self.price(model)
        if price is None:
            return 0.0
        return (prompt_tokens * price[0] + completion_tokens * price[1]) / 1e6

    def require(self, model: str, field: str = "api_prices") -> None:
        """Raise before spending when a cost budget is set but `model` has no price."""
        if self.price(model) is None:
            listed = ", ".join(sorted(self.table)) or "none"
            raise ValueError(
                f"annotation_cost_budget is set but model {model!r} has no price in `{field}` (priced: {listed}). "
                'Add e.g. {"' + model + '": {"input": 0.15, "output": 0.6}} ($ per 1M tokens), or "*" for all models.'
            )

    def __bool__(self) -> bool:
        return bool(self.table)

    def __repr__(self) -> str:
        return f"PriceTable({self.table!r})"


def _load_table(text: str | os.PathLike):
    path = Path(os.path.expanduser(str(text)))
    if path.suffix.lower() in (".json", ".yaml", ".yml") or path.exists():
        if not path.exists():
            raise ValueError(f"Price table file {str(path)!r} does not exist.")
        raw = path.read_text(encoding="utf-8")
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            return yaml.safe_load(raw)
        return json.loads(raw)
    try:
        return json.loads(str(text))
    except json.JSONDecodeError as error:
        raise ValueError(
            f"The price table {str(text)!r} is neither a JSON object nor the path of a .json/.yaml file ({error})."
        ) from None


class UsageLedger:
    """The `usage` table of an `AnnotationStore`, for one run: cached responses, reservations, spend.

    Args:
        store: the annotation store (or its path) — the same file as the annotations, so one file holds every label
            and every dollar of a run.
        run_id: the run the spend is counted against (resume with the same id).
        prices: a `PriceTable` (or anything it accepts).
        budget: `annotation_cost_budget` in dollars (None = unlimited).
        lease_seconds: a reservation of a process on another host counts as abandoned after this long.
    """

    def __init__(
        self,
        store: AnnotationStore | str | os.PathLike,
        run_id: str = "default",
        prices: PriceTable | Mapping | str | None = None,
        budget: float | None = None,
        lease_seconds: float = 900.0,
    ):
        if budget is not None and not (isinstance(budget, (int, float)) and math.isfinite(budget) and budget >= 0):
            raise ValueError(
                f"annotation_cost_budget must be None (unlimited) or a finite number >= 0, got {budget!r}."
            )
        self.store = store if isinstance(store, AnnotationStore) else AnnotationStore(store)
        self.run_id = str(run_id)
        self.prices = prices if isinstance(prices, PriceTable) else PriceTable(prices)
        self.budget = None if budget is None else float(budget)
        self.lease_seconds = float(lease_seconds)
        self._owner, self._owner_pid = uuid.uuid4().hex, os.getpid()

    @property
    def owner(self) -> str:
        if self._owner_pid != os.getpid():  # a forked child must not share reservations
            self._owner, self._owner_pid = uuid.uuid4().hex, os.getpid()
        return self._owner

    # ------------------------------------------------------------------------------------------- the cache

    def cached(self, key: str) -> dict | None:
        """The stored response of a completed call with this request key (any run), or None."""
        row = (
            self.store._conn()
            .execute("SELECT response FROM usage WHERE key = ? AND status = 'done' ORDER BY id LIMIT 1", (key,))
            .fetchone()
        )
        return None if row is None or row[0] is None else json.loads(row[0])

    # ------------------------------------------------------------------------------------------- reserve / settle

    def reserve(self, key: str, model: str, endpoint: str, upper_cost: float) -> int | None:
        """Reserve `upper_cost` dollars for one attempt; the row id, or None when the budget cannot cover it."""
        now = time.time()
        with self._transaction() as conn:
            self._expire(conn, now)
            if self.budget is not None and _spent(conn, self.run_id) + upper_cost > self.budget + 1e-12:
                return None
            cursor = conn.execute(
                "INSERT INTO usage(run_id, key, model, endpoint, status, reserved_cost, cost, owner, pid, host, "
                "created_at, updated_at) VALUES (?, ?, ?, ?, 'reserved', ?, 0, ?, ?, ?, ?, ?)",
                (self.run_id, key, model, endpoint, float(upper_cost), self.owner, os.getpid(), _HOST, now, now),
            )
            return int(cursor.lastrowid)

    def settle(self, row_id: int, response: dict, prompt_tokens: int, completion_tokens: int, model: str) -> float:
        """Record a completed call (response and usage) in one transaction; returns its cost in dollars."""
        cost = self.prices.cost(model, prompt_tokens, completion_tokens)
        with self._transaction() as conn:
            conn.execute(
                "UPDATE usage SET status = 'done', cost = ?, prompt_tokens = ?, completion_tokens = ?, response = ?, "
                "owner = NULL, updated_at = ? WHERE id = ?",
                (cost, int(prompt_tokens), int(completion_tokens), canonical_json(response), time.time(), row_id),
            )
        return cost

    def fail(self, row_id: int, *, billed_unknown: bool, error: str) -> None:
        """Record a failed attempt: `failed` (cost 0) or, when the server may have billed it, `unknown` (the reserved
        upper bound stays charged)."""
        status = "unknown" if billed_unknown else "failed"
        with self._transaction() as conn:
            conn.execute(
                "UPDATE usage SET status = ?, cost = CASE WHEN ? THEN reserved_cost ELSE 0 END, error = ?, "
                "owner = NULL, updated_at = ? WHERE id = ? AND status = 'reserved'",
                (status, int(billed_unknown), str(error)[:500], time.time(), row_id),
            )

    @contextmanager
    def _transaction(self):
        """The store's write transaction; a write the disk refuses (`StorageWriteError`) also says what this ledger
        keeps: completed calls keep their responses, so none of them is paid again."""
        with storage_guard(kept=self._kept), self.store.transaction() as conn:
            yield conn

    def _kept(self) -> dict[str, str]:
        totals = self.totals()
        if not totals["calls"]:
            return {}
        return {
            "usage": f"{totals['calls']} completed API call(s) (${totals['cost']:.4f}) with their responses in the "
            "usage ledger"
        }

    def _expire(self, conn, now: float) -> None:
        """Reservations of dead processes (or expired leases) become `unknown`: their bill was never seen."""
        rows = conn.execute("SELECT id, pid, host, updated_at FROM usage WHERE status = 'reserved'").fetchall()
        dead = []
        for row_id, pid, host, updated_at in rows:
            if host == _HOST:
                if pid != os.getpid() and not pid_alive(pid):
                    dead.append(row_id)
            elif now - updated_at > self.lease_seconds:
                dead.append(row_id)
        conn.executemany(
            "UPDATE usage SET status = 'unknown', cost = reserved_cost, error = 'process ended during the call', "
            "owner = NULL, updated_at = ? WHERE id = ?",
            [(now, i) for i in dead],
        )

    # ------------------------------------------------------------------------------------------- reading

    @property
    def spent(self) -> float:
        """Dollars charged to this run (settled, unknown and in-flight reservations)."""
        return _spent(self.store._conn(), self.run_id)

    @property
    def remaining(self) -> float | None:
        return None if self.budget is None else max(0.0, self.budget - self.spent)

    def totals(self) -> dict:
        """This run's `{"calls", "failed", "unknown", "prompt_tokens", "completion_tokens", "cost"}`."""
        rows = summary(self.store, run_id=self.run_id)
        out = {"calls": 0, "failed": 0, "unknown": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost": 0.0}
        for r in rows:
            for name in out:
                out[name] += r[name]
        return out


def _spent(conn, run_id: str) -> float:
    row = conn.execute(
        "SELECT COALESCE(SUM(CASE WHEN status = 'reserved' THEN reserved_cost ELSE cost END), 0) FROM usage "
        "WHERE run_id = ? AND status IN ('done', 'unknown', 'reserved')",
        (run_id,),
    ).fetchone()
    return float(row[0])


def summary(store: AnnotationStore | str | os.PathLike, run_id: str | None = None) -> list[dict]:
    """Per (run, model): completed calls, failed and unknown attempts, reported tokens and dollars (for `aepo stats`)."""
    store = store if isinstance(store, AnnotationStore) else AnnotationStore(store)
    sql = (
        "SELECT run_id, model, SUM(status = 'done'), SUM(status = 'failed'), SUM(status = 'unknown'), "
        "COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0), "
        "COALESCE(SUM(CASE WHEN status = 'reserved' THEN reserved_cost ELSE cost END), 0) FROM usage"
    )
    args: tuple = ()
    if run_id is not None:
        sql += " WHERE run_id = ?"
        args = (run_id,)
    rows = store._conn().execute(sql + " GROUP BY run_id, model ORDER BY run_id, model", args).fetchall()
    return [
        {
            "run_id": r[0],
            "model": r[1],
            "calls": int(r[2] or 0),
            "failed": int(r[3] or 0),
            "unknown": int(r[4] or 0),
            "prompt_tokens": int(r[5]),
            "completion_tokens": int(r[6]),
            "cost": float(r[7]),
        }
        for r in rows
    ]
