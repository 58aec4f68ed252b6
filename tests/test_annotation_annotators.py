"""Each annotator on tiny offline models: dataset scores, reward functions, a reward model, a pairwise LLM judge."""

from __future__ import annotations

import asyncio
import math
from types import SimpleNamespace

import pytest
import torch

from aepo_trainer.annotation import (
    AnnotationError,
    AnnotationRequest,
    AnnotationService,
    AnnotationStore,
    DatasetScoresAnnotator,
    HumanQueueAnnotator,
    PairwiseJudgeAnnotator,
    RewardFunctionAnnotator,
    RewardModelAnnotator,
    build_annotator,
)
from aepo_trainer.reduction.pairing import make_pairs

CHAT_REQ = AnnotationRequest(
    [{"role": "user", "content": "What is two plus two?"}],
    [
        [{"role": "assistant", "content": "Two plus two equals four."}],
        [{"role": "assistant", "content": "I'm sorry, but I cannot help with that request."}],
    ],
)
TEXT_REQ = AnnotationRequest(
    "What is the capital of France?",
    [
        "The capital of France is Paris.",
        "Paris.",
        "The quick brown fox jumps over the lazy dog.",
        "I'm sorry, but I cannot help with that request.",
        "Answer: yes.",
    ],
    indices=[0, 3, 4, 9, 11],
)


# ------------------------------------------------------------------------------------------------ dataset scores


def test_dataset_scores_reads_only_selected_positions(demo_pool_rows, tmp_path):
    rows = demo_pool_rows[:6]
    ann = DatasetScoresAnnotator("scores")
    assert ann.identity == "dataset_scores:scores"
    reqs = [AnnotationRequest(r["prompt"], [r["completions"][i] for i in (1, 6)], [1, 6], row=r) for r in rows]
    scores = ann.score(reqs)
    assert scores == [[r["scores"][1], r["scores"][6]] for r in rows]
    out = AnnotationService(ann, AnnotationStore(tmp_path / "s.sqlite"), budget=8).annotate(reqs)
    assert out.paid == 8 and out.skipped == [4, 5]
    pairs = make_pairs(out.scores)
    assert all(p.chosen_score > p.rejected_score for p in pairs.pairs)


class Exploding(list):
    """A score list that fails if a position other than the selected ones is read."""

    def __init__(self, values, allowed):
        super().__init__(values)
        self.allowed = set(allowed)

    def __getitem__(self, i):
        assert i in self.allowed, f"read unselected position {i}"
        return super().__getitem__(i)


def test_dataset_scores_never_reads_unselected_values():
    row = {"scores": Exploding([0.0, None, 0.7, float("nan"), None, 0.1, None, None], allowed=[2, 5])}
    assert DatasetScoresAnnotator().score([AnnotationRequest("p", ["a", "b"], [2, 5], row=row)]) == [[0.7, 0.1]]


@pytest.mark.parametrize("value", [None, float("nan"), math.inf, "n/a"])
def test_dataset_scores_missing_value_names_column_and_position(value):
    row = {"reward": [0.1, value, 0.3]}
    with pytest.raises(AnnotationError, match=r"column 'reward' holds .* at pool position 1 for prompt 'hello'"):
        DatasetScoresAnnotator("reward").score([AnnotationRequest("hello", ["a", "b"], [0, 1], row=row)])


def test_dataset_scores_missing_column_or_position():
    with pytest.raises(AnnotationError, match="has no 'scores' column"):
        DatasetScoresAnnotator().score([AnnotationRequest("p", ["a"], [0], row={"other": 1})])
    with pytest.raises(AnnotationError, match="no score at pool position 7"):
        DatasetScoresAnnotator().score([AnnotationRequest("p", ["a"], [7], row={"scores": [1.0, 2.0]})])


# ------------------------------------------------------------------------------------------------ reward functions


def test_reward_function_gets_trl_signature_and_row_columns():
    seen = {}

    def reward(prompts, completions, completion_ids, trainer_state, log_extra, log_metric, answer, **kwargs):
        seen.update(prompts=prompts, completions=completions, answer=answer, kwargs=kwargs, ids=completion_ids)
        return [1.0 if a in c else 0.0 for c, a in zip(completions, answer)]

    ann = RewardFunctionAnnotator(reward)
    assert ann.identity.startswith("reward_function:") and "reward" in ann.identity
    reqs = [
        AnnotationRequest("2+2?", ["4", "5"], row={"answer": "4", "completions": ["pool"], "scores": [1, 2]}),
        AnnotationRequest("3+3?", ["6"], row={"answer": "6"}),
    ]
    assert ann.score(reqs) == [[1.0, 0.0], [1.0]]
    assert seen["prompts"] == ["2+2?", "2+2?", "3+3?"] and seen["completions"] == ["4", "5", "6"]
    assert seen["answer"] == ["4", "4", "6"]
    assert "completions" not in seen["kwargs"] and seen["kwargs"]["scores"] == [[1, 2], [1, 2], None]
    assert seen["ids"] is None


def test_reward_function_conversational_and_tokenizer(tiny_tokenizer):
    def reward(completions, completion_ids, **kwargs):
        return [float(len(ids)) for ids in completion_ids]

    ann = RewardFunctionAnnotator(reward, tokenizer=tiny_tokenizer, name="n_tokens")
    assert ann.identity.startswith("reward_function:n_tokens@") and len(ann.identity.split("@")[1]) == 16
    (scores,) = ann.score([CHAT_REQ])
    assert len(scores) == 2 and all(s > 0 for s in scores)


def test_several_reward_functions_weighted_with_none_ignored():
    def f1(completions, **kw):
        return [1.0, None, None]

    def f2(completions, **kw):
        return [10.0, 20.0, None]

    ann = RewardFunctionAnnotator([f1, f2], weights=[2.0, 0.5])
    assert ann.score([AnnotationRequest("p", ["a", "b", "c"])]) == [[7.0, 10.0, None]]
    assert "|w=2,0.5" in ann.identity


def test_async_reward_function():
    async def reward(prompts, completions, **kw):
        await asyncio.sleep(0)
        return [0.5 for _ in completions]

    assert RewardFunctionAnnotator(reward).score([AnnotationRequest("p", ["a", "b"])]) == [[0.5, 0.5]]


def test_reward_function_wrong_length_and_bad_input():
    with pytest.raises(AnnotationError, match=r"returned 1 rewards for 2 \(prompt, completion\) pairs"):
        RewardFunctionAnnotator(lambda completions, **kw: [1.0], name="short").score(
            [AnnotationRequest("p", ["a", "b"])]
        )
    with pytest.raises(TypeError, match="RewardModelAnnotator"):
        RewardFunctionAnnotator("OpenAssistant/reward-model-deberta-v3-large-v2")
    with pytest.raises(ValueError, match="weights"):
        RewardFunctionAnnotator([len, len], weights=[1.0])


# ------------------------------------------------------------------------------------------------ reward model


def test_reward_model_scores_batched_and_batch_independent(tiny_reward_model_path):
    big = RewardModelAnnotator(tiny_reward_model_path, batch_size=16)
    one = RewardModelAnnotator(tiny_reward_model_path, batch_size=1)
    assert big.identity == f"reward_model:{tiny_reward_model_path}"
    a, b = big.score([TEXT_REQ, CHAT_REQ]), one.score([TEXT_REQ, CHAT_REQ])
    assert [len(x) for x in a] == [5, 2]
    for x, y in zip(a, b):
        assert x == pytest.approx(y, abs=1e-5)  # padding does not change a score
    assert len({round(s, 6) for s in a[0]}) == 5


def test_reward_model_uses_chat_template_when_present(tiny_reward_model_path, tiny_tokenizer):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_reward_model_path)
    with_template = RewardModelAnnotator(model, tokenizer=tiny_tokenizer, name="tiny").score([TEXT_REQ])[0]
    pair_encoding = RewardModelAnnotator(model, tokenizer=tiny_tokenizer, name="tiny", use_chat_template=False).score(
        [TEXT_REQ]
    )[0]
    assert with_template != pytest.approx(pair_encoding, abs=1e-4)
    # manual reference for one item: chat template + last-token logit
    text = tiny_tokenizer.apply_chat_template(
        [{"role": "user", "content": TEXT_REQ.prompt}, {"role": "assistant", "content": TEXT_REQ.completions[0]}],
        tokenize=False,
    )
    ids = tiny_tokenizer(text, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        ref = model(**ids).logits[0, 0].item()
    assert with_template[0] == pytest.approx(ref, abs=1e-5)


def test_reward_model_through_service_and_dtype(tiny_reward_model_path, tmp_path):
    ann = RewardModelAnnotator(tiny_reward_model_path, device="cpu", dtype="float32", batch_size=3)
    svc = AnnotationService(ann, AnnotationStore(tmp_path / "s.sqlite"), batch_size=4)
    out = svc.annotate([TEXT_REQ, CHAT_REQ])
    assert out.paid == 7 and out.invalid == 0
    assert ann.model.dtype == torch.float32 and not ann.model.training
    assert all(not p.requires_grad for p in ann.model.parameters())


# ------------------------------------------------------------------------------------------------ judge


@pytest.fixture(scope="module")
def judge_model(tiny_model_path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_path)


def test_judge_k2_scores_are_the_debiased_preference(judge_model, tiny_tokenizer):
    judge = PairwiseJudgeAnnotator(judge_model, tokenizer=tiny_tokenizer, name="tiny")
    req = AnnotationRequest(TEXT_REQ.prompt, TEXT_REQ.completions[:2])
    (s,) = judge.score([req])
    assert s[0] + s[1] == pytest.approx(1.0, abs=1e-6)
    # swapping the two completions mirrors the scores exactly (both orders are judged)
    (t,) = judge.score([AnnotationRequest(req.prompt, req.completions[::-1])])
    assert t == pytest.approx(s[::-1], abs=1e-6)

    # reference: read P(A), P(B) at the next token by hand
    def q(a, b):
        text = judge._judge_text(req.prompt, a, b)
        ids = tiny_tokenizer(text, add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            logp = torch.log_softmax(judge_model(**ids).logits[0, -1].float(), -1)
        ia, ib = judge._choice_token_ids()
        pa, pb = logp[ia].exp().sum(), logp[ib].exp().sum()
        return (pa / (pa + pb)).item()

    a, b = req.completions
    assert s[0] == pytest.approx((q(a, b) + 1 - q(b, a)) / 2, abs=1e-5)


def test_judge_batching_is_exact(judge_model, tiny_tokenizer):
    small = PairwiseJudgeAnnotator(judge_model, tokenizer=tiny_tokenizer, name="tiny", batch_size=1)
    big = PairwiseJudgeAnnotator(judge_model, tokenizer=tiny_tokenizer, name="tiny", batch_size=16)
    triples = [(TEXT_REQ.prompt, TEXT_REQ.completions[i], TEXT_REQ.completions[j]) for i, j in [(0, 1), (2, 3), (4, 0)]]
    assert big.preferences(triples) == pytest.approx(small.preferences(triples), abs=1e-5)


def test_judge_tournament_for_k_greater_than_2():
    class Rigged(PairwiseJudgeAnnotator):
        """Prefers the longer response, plus a strong bias for whatever is shown in position A."""

        def _choice_probs(self, texts):
            out = []
            for t in texts:
                a = t.split("[Assistant A]\n")[1].split("\n\n[Assistant B]")[0]
                b = t.split("[Assistant B]\n")[1].split("\n\nPlease choose")[0]
                base = 0.8 if len(a) > len(b) else 0.2 if len(a) < len(b) else 0.5
                out.append(min(1.0, base + 0.15))  # position bias toward A
            return out

    judge = Rigged("unused-path", tokenizer=SimpleNamespace(chat_template=None, pad_token_id=0), name="rigged")
    comps = ["xx", "xxxxx", "x", "xxxx", "xxx"]
    (s,) = judge.score([AnnotationRequest("p", comps)])
    ranking = make_pairs([s]).rankings[0]
    assert ranking[0] == 1  # the longest wins the tournament
    assert s[1] > 2.5  # 5 players: 3 rounds survived (with byes) + a winning final
    # debiasing removed the +0.15 position bias: pref = ((0.8+.15) + 1 - (0.2+.15)) / 2 = 0.8
    assert judge.preferences([("p", "xxxx", "x")]) == pytest.approx([0.8])
    biased = Rigged(
        "unused-path", tokenizer=SimpleNamespace(chat_template=None, pad_token_id=0), name="r", debias=False
    )
    assert biased.preferences([("p", "x", "xxxx")]) == pytest.approx([0.35])
    pairs = make_pairs([s]).pairs
    assert comps[pairs[0].chosen] == "xxxxx" and len(comps[pairs[0].rejected]) < 5
    # k = 2 with the rigged judge: the longer one wins with the debiased probability
    (s2,) = judge.score([AnnotationRequest("p", ["x", "xxx"])])
    assert s2 == pytest.approx([0.2, 0.8])
    assert judge.score([AnnotationRequest("p", ["only"])]) == [[None]]


def test_judge_with_peft_policy_disables_the_adapter(tiny_model_path, tiny_tokenizer, judge_model):
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    policy = peft.get_peft_model(
        base, peft.LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    policy.train()
    triples = [(TEXT_REQ.prompt, TEXT_REQ.completions[0], TEXT_REQ.completions[3])]
    frozen = PairwiseJudgeAnnotator(policy, tokenizer=tiny_tokenizer)
    live = PairwiseJudgeAnnotator(policy, tokenizer=tiny_tokenizer, disable_adapter=False)
    reference = PairwiseJudgeAnnotator(judge_model, tokenizer=tiny_tokenizer, name="ref")
    assert frozen.preferences(triples) == pytest.approx(reference.preferences(triples), abs=1e-6)
    assert live.preferences(triples) != pytest.approx(reference.preferences(triples), abs=1e-6)
    assert policy.training  # train mode restored
    assert "|frozen|" in frozen.identity and "|live-adapter|" in live.identity
    assert frozen.identity != live.identity


def test_judge_copy_model_is_frozen(judge_model, tiny_tokenizer):
    judge = PairwiseJudgeAnnotator(judge_model, tokenizer=tiny_tokenizer, name="tiny", copy_model=True)
    assert judge.model is not judge_model and all(not p.requires_grad for p in judge.model.parameters())


def test_judge_through_service_charges_per_completion(tiny_model_path, tmp_path):
    judge = PairwiseJudgeAnnotator(tiny_model_path, device="cpu", max_response_tokens=8)
    svc = AnnotationService(judge, AnnotationStore(tmp_path / "s.sqlite"), budget=7)
    out = svc.annotate(
        [
            AnnotationRequest(TEXT_REQ.prompt, TEXT_REQ.completions[:3]),
            CHAT_REQ,
            AnnotationRequest("another", ["a", "b", "c"]),
        ]
    )
    assert out.paid == 5 and out.skipped == [2]
    assert out.scores[1][0] + out.scores[1][1] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="response_b"):
        PairwiseJudgeAnnotator(tiny_model_path, template="{prompt} {response_a}")


# ------------------------------------------------------------------------------------------------ build_annotator


def _args(tmp_path, **kw):
    base = dict(
        annotator="dataset_scores",
        scores_column="scores",
        reward_model_name_or_path=None,
        annotation_batch_size=4,
        annotation_queue=None,
        output_dir=str(tmp_path),
    )
    base.update(kw)
    return SimpleNamespace(**base)


def test_build_annotator(tmp_path, tiny_reward_model_path, judge_model, tiny_tokenizer):
    assert isinstance(build_annotator(_args(tmp_path, scores_column="rm")), DatasetScoresAnnotator)
    assert build_annotator(_args(tmp_path, scores_column="rm")).identity == "dataset_scores:rm"
    rm = build_annotator(_args(tmp_path, annotator="reward_model", reward_model_name_or_path=tiny_reward_model_path))
    assert isinstance(rm, RewardModelAnnotator) and rm.batch_size == 4
    judge = build_annotator(_args(tmp_path, annotator="judge"), model=judge_model, tokenizer=tiny_tokenizer)
    assert isinstance(judge, PairwiseJudgeAnnotator) and judge.disable_adapter
    human = build_annotator(_args(tmp_path, annotator="human"))
    assert isinstance(human, HumanQueueAnnotator)
    assert str(human.queue_path) == str(tmp_path / "annotation_queue.jsonl")
    with pytest.raises(ValueError, match="needs the judge model"):
        build_annotator(_args(tmp_path, annotator="judge"))
    with pytest.raises(ValueError, match="reward_model_name_or_path"):
        build_annotator(_args(tmp_path, annotator="reward_model"))


def test_build_annotator_from_real_config(tmp_path):
    from aepo_trainer.config import AEPOConfig

    args = AEPOConfig(output_dir=str(tmp_path), scores_column="gold", report_to="none", bf16=False)
    ann = build_annotator(args)
    assert ann.identity == "dataset_scores:gold"
