"""`annotator='self_judge'`: the policy judges its own candidates (both orders, tournament), its identity follows the
weights, so the store reuses a judgment only for the same weights."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from aepo_trainer.annotation import (
    AnnotationRequest,
    AnnotationService,
    AnnotationStore,
    PairwiseJudgeAnnotator,
    build_annotator,
)

PROMPT = "What is the capital of France?"
CANDIDATES = ["The capital of France is Paris.", "Paris.", "I cannot help with that.", "Answer: yes."]


@pytest.fixture
def policy(tiny_model_path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_path)


def _args(**kw):
    return SimpleNamespace(
        **{"annotator": "self_judge", "annotation_batch_size": 8, "self_judge_model": "current", **kw}
    )


def _q(model, tokenizer, judge, a, b) -> float:
    """P(A) / (P(A) + P(B)) for one order, by hand: one forward pass over the judge prompt, as SELF-JUDGE reads it."""
    ids = tokenizer(judge._judge_text(PROMPT, a, b), add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        p = torch.softmax(model(**ids).logits[0, -1].float(), -1)
    ia, ib = judge._choice_token_ids()
    return (p[ia].sum() / (p[ia].sum() + p[ib].sum())).item()


def _sgd_step(model, tokenizer):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    ids = tokenizer("Paris is the capital of France.", return_tensors="pt")["input_ids"]
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    optimizer.zero_grad()


def test_self_judge_runs_the_tournament_in_both_orders(policy, tiny_tokenizer):
    judge = build_annotator(_args(), model=policy, tokenizer=tiny_tokenizer)
    assert isinstance(judge, PairwiseJudgeAnnotator) and judge.live and judge.relative
    seen = []
    original = judge._choice_probs
    judge._choice_probs = lambda texts: (seen.extend(texts), original(texts))[1]
    (scores,) = judge.score([AnnotationRequest(PROMPT, CANDIDATES)])

    # k = 4: round one (0 v 1, 2 v 3) and the final, each judged as (a, b) and (b, a): 6 judge prompts
    assert len(seen) == 6 and len(set(seen)) == 6
    q = {}
    for a in range(4):
        for b in range(4):
            if a != b:
                q[a, b] = _q(policy, tiny_tokenizer, judge, CANDIDATES[a], CANDIDATES[b])

    def pref(a, b):  # debiased preference of a over b
        return (q[a, b] + 1 - q[b, a]) / 2

    w1 = 0 if pref(0, 1) >= 0.5 else 1
    w2 = 2 if pref(2, 3) >= 0.5 else 3
    champion = w1 if pref(w1, w2) >= 0.5 else w2
    expected = [0.0] * 4
    for loser, winner in ((1 - w1, w1), (5 - w2, w2)):  # knocked out in round one: 0 rounds + P(win that match)
        expected[loser] = pref(loser, winner)
    runner_up = w2 if champion == w1 else w1
    expected[champion] = 2 + pref(champion, runner_up)
    expected[runner_up] = 1 + pref(runner_up, champion)
    assert scores == pytest.approx(expected, abs=1e-5)
    assert max(range(4), key=scores.__getitem__) == champion


def test_live_identity_follows_the_weights_and_the_store_reuses_only_same_weights(policy, tiny_tokenizer, tmp_path):
    judge = build_annotator(_args(), model=policy, tokenizer=tiny_tokenizer)
    frozen_copy = PairwiseJudgeAnnotator(policy, tokenizer=tiny_tokenizer, name="tiny")
    service = AnnotationService(judge, AnnotationStore(tmp_path / "s.sqlite"), budget=100)
    request = AnnotationRequest(PROMPT, CANDIDATES[:2])

    before = judge.identity
    assert "|live|" in before and "|policy@" in before
    assert judge.identity == before  # unchanged weights, unchanged identity (the digest is cached)
    first = service.annotate([request])
    again = service.annotate([request])
    assert (first.paid, again.paid, again.reused) == (2, 0, 2)
    assert again.scores == first.scores

    frozen_before = frozen_copy.identity
    _sgd_step(policy, tiny_tokenizer)
    assert judge.identity != before  # new weights: a new judge
    assert frozen_copy.identity == frozen_before  # a frozen judge keeps its identity
    after = service.annotate([request])
    assert after.paid == 2 and after.scores != first.scores  # judged again by the updated policy
    assert service.spent == 4

    # an explicit version (what the trainer sets per step) replaces the digest; same version = same judge
    judge.set_policy_version("run-1:step=3")
    assert judge.identity.endswith("|policy@run-1:step=3")
    assert service.annotate([request]).paid == 2 and service.annotate([request]).paid == 0
    with pytest.raises(ValueError, match="frozen"):
        frozen_copy.set_policy_version("x")


def test_resumed_weights_are_the_same_judge(tiny_model_path, policy, tiny_tokenizer):
    """A run resumed from a checkpoint has byte-identical weights: same identity, so no judgment is paid twice."""
    from transformers import AutoModelForCausalLM

    _sgd_step(policy, tiny_tokenizer)
    live = build_annotator(_args(), model=policy, tokenizer=tiny_tokenizer)
    reloaded = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    reloaded.load_state_dict(policy.state_dict())
    assert build_annotator(_args(), model=reloaded, tokenizer=tiny_tokenizer).identity == live.identity
    fresh = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    assert build_annotator(_args(), model=fresh, tokenizer=tiny_tokenizer).identity != live.identity


def test_peft_current_adapter_vs_frozen_starting_model(tiny_model_path, tiny_tokenizer):
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    reference = PairwiseJudgeAnnotator(AutoModelForCausalLM.from_pretrained(tiny_model_path), tokenizer=tiny_tokenizer)
    policy = peft.get_peft_model(
        base, peft.LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    current = build_annotator(_args(), model=policy, tokenizer=tiny_tokenizer)
    frozen = build_annotator(_args(self_judge_model="frozen"), model=policy, tokenizer=tiny_tokenizer)
    triples = [(PROMPT, CANDIDATES[0], CANDIDATES[2])]
    assert frozen.preferences(triples) == pytest.approx(reference.preferences(triples), abs=1e-6)
    assert current.preferences(triples) != pytest.approx(reference.preferences(triples), abs=1e-6)
    assert "|live-adapter|" in current.identity and "|frozen|" in frozen.identity
    # the digest covers the trainable (adapter) weights only: cheap, and it changes when the adapter does
    before = current.identity
    with torch.no_grad():
        next(p for n, p in policy.named_parameters() if "lora_A" in n).add_(0.1)
    assert current.identity != before


def test_factory_errors(policy, tiny_tokenizer):
    with pytest.raises(ValueError, match="needs the policy model"):
        build_annotator(_args())
    with pytest.raises(ValueError, match="ref_model"):
        build_annotator(_args(self_judge_model="frozen"), model=policy, tokenizer=tiny_tokenizer)
    frozen = build_annotator(_args(self_judge_model="frozen"), model=policy, ref_model=policy, tokenizer=tiny_tokenizer)
    assert not frozen.live
    with pytest.raises(ValueError, match="copy_model"):
        PairwiseJudgeAnnotator(policy, tokenizer=tiny_tokenizer, tracks_policy=True, copy_model=True)


def test_config_accepts_self_judge(tmp_path):
    from aepo_trainer import AEPOConfig

    config = AEPOConfig(output_dir=str(tmp_path), annotator="self_judge", self_judge_model="frozen", bf16=False)
    assert config.annotator == "self_judge"
    with pytest.raises(ValueError, match="self_judge_model"):
        AEPOConfig(output_dir=str(tmp_path), annotator="self_judge", self_judge_model="live", bf16=False)
