"""A resumed `aepo select` with an active strategy skips its finished chunks: the surrogate is restored from the
labels those chunks taught it, in one fit, and the run writes the bytes of an uninterrupted one."""

from __future__ import annotations

import pytest
from test_active_cli import pools, select_argv  # noqa: F401 (the module's pool file fixture)
from test_cli import _store_counts, read_jsonl

CHUNKS = ["--chunk_size", "8"]  # 6 chunks of one active batch (8 prompts) each


@pytest.mark.parametrize("strategy", ["delta_ucb", "aepo_ucb"])
def test_resume_restores_the_surrogate_in_one_fit_and_writes_the_same_bytes(tmp_path, pools, monkeypatch, strategy):  # noqa: F811
    from aepo_trainer.cli import main
    from aepo_trainer.cli.streaming import ChunkedOutput
    from aepo_trainer.reduction import PoolReducer
    from aepo_trainer.selection.surrogate import BayesianLinearSurrogate

    reference = tmp_path / "reference.jsonl"
    assert main(select_argv(pools, reference, strategy, *CHUNKS)) == 0

    out = tmp_path / "pairs.jsonl"
    write = ChunkedOutput.write

    def killed_at_chunk_3(self, index, rows, stats, *, complete):
        if index == 3:
            raise KeyboardInterrupt
        write(self, index, rows, stats, complete=complete)

    monkeypatch.setattr(ChunkedOutput, "write", killed_at_chunk_3)
    assert main(select_argv(pools, out, strategy, *CHUNKS)) == 130
    monkeypatch.setattr(ChunkedOutput, "write", write)
    store, run_id = f"{out}.annotations.sqlite", f"aepo-select:{out}"
    assert _store_counts(store, run_id) == (64, 64)  # chunks 0-3 annotated (chunk 3 paid, never written)

    calls = {"reduce": 0, "fit": 0, "fold_fits": 0}
    reduce, fit, restricted = PoolReducer.reduce, BayesianLinearSurrogate.fit, BayesianLinearSurrogate.restricted

    def counting_reduce(self, *args, **kwargs):
        calls["reduce"] += 1
        return reduce(self, *args, **kwargs)

    def counting_fit(self):
        calls["fold_fits" if getattr(self, "fold", False) else "fit"] += 1
        return fit(self)

    monkeypatch.setattr(PoolReducer, "reduce", counting_reduce)
    monkeypatch.setattr(BayesianLinearSurrogate, "fit", counting_fit)

    def marked_restricted(self, prompt_keys):  # the safety rule's cross-validation fits (one per fold)
        other = restricted(self, prompt_keys)
        other.fold = True
        return other

    monkeypatch.setattr(BayesianLinearSurrogate, "restricted", marked_restricted)
    assert main(select_argv(pools, out, strategy, *CHUNKS)) == 0
    assert calls["reduce"] == 3  # chunks 3, 4, 5: the three finished ones are not selected again
    assert calls["fit"] == 1 + 3  # one fit restores chunks 0-2, then one per new batch
    assert calls["fold_fits"] == 0  # the prequential safety test (the default) refits nothing
    assert _store_counts(store, run_id) == (96, 96)  # chunk 3's labels came from the store: nothing paid twice
    assert out.read_bytes() == reference.read_bytes()
    timing = ("fit_seconds", "select_seconds")
    curve = [{k: v for k, v in q.items() if k not in timing} for q in read_jsonl(f"{out}.surrogate.jsonl")]
    expected = [{k: v for k, v in q.items() if k not in timing} for q in read_jsonl(f"{reference}.surrogate.jsonl")]
    assert curve == expected and len(curve) == 6  # the whole learning curve, the restored points included
