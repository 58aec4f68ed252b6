"""The surrogate's feature model (`active_feature_model`, issue 27): the features equal an independent computation (a
reward-model checkpoint is read at the token its score head reads, and its score is the head applied to the feature),
`aepo select` and the trainer use them, a feature model of another vocabulary than the policy's works, the annotating
reward model is refused as feature model, and a model that cannot serve is refused before anything is paid."""

from __future__ import annotations

import math

import pytest
import torch
from test_active_cli import ACTIVE, pools  # noqa: F401 - the module's pools fixture
from test_cli import read_jsonl
from test_pool_trainer import make_trainer, pool_rows

from aepo_trainer import AEPOConfig
from aepo_trainer.annotation.base import AnnotationRequest
from aepo_trainer.annotation.dataset_scores import DatasetScoresAnnotator
from aepo_trainer.annotation.reward_model import RewardModelAnnotator
from aepo_trainer.selection.feature_model import FeatureModel, FeatureModelError
from aepo_trainer.selection.surrogate import hidden_state_feature


def _chat_inputs(tokenizer, prompt, completion):
    """The candidate as a chat reward model reads it (independently of `FeatureModel.tokenize`)."""
    user = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    text = tokenizer.apply_chat_template([*user, {"role": "assistant", "content": completion}], tokenize=False)
    return tokenizer(text, add_special_tokens=False, return_tensors="pt")


class CountingScores(DatasetScoresAnnotator):
    calls = 0

    def score(self, requests):
        CountingScores.calls += 1
        return super().score(requests)


@pytest.fixture(scope="module")
def other_vocabulary_model_path(tmp_path_factory):
    """A tiny causal LM whose tokenizer was trained on other text with a smaller vocabulary than the policy's."""
    from aepo_trainer.testing import build_tiny_causal_lm, build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer(vocab_size=300, corpus=["Questions and answers about colours, cats and rivers."])
    return str(build_tiny_causal_lm(tmp_path_factory.mktemp("other-vocab"), hidden_size=16, tokenizer=tokenizer))


def test_features_are_the_last_tokens_last_hidden_state(tiny_model_path):
    from transformers import AutoModel, AutoTokenizer

    fm = FeatureModel(tiny_model_path)
    assert fm.last_token and not fm.reward_model and fm.chat_template  # a causal LM with a chat template
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    rows = [
        {"prompt": "Sort 3 1 2", "completions": ["1 2 3", "3 2 1 and more words here"]},
        {"prompt": conversation, "completions": ["Hello"]},  # chat messages are rendered, not repr()'d
    ]
    features = fm.encode_pools(rows, "prompt", "completions", 2)
    assert features.shape == (2, 2, fm.hidden_size) and torch.isnan(features[1, 1]).all()  # padding
    tokenizer, model = AutoTokenizer.from_pretrained(tiny_model_path), AutoModel.from_pretrained(tiny_model_path)
    for b, i in ((0, 0), (0, 1), (1, 0)):
        ids = _chat_inputs(tokenizer, rows[b]["prompt"], rows[b]["completions"][i])
        with torch.no_grad():
            expected = model(**ids).last_hidden_state[0, -1]
        torch.testing.assert_close(features[b, i], expected, rtol=1e-4, atol=1e-5)  # padding changes nothing
    mask = torch.tensor([[True, True], [True, False]])
    unit = hidden_state_feature(rows, None, mask, "completions", hidden_states=features.double())
    torch.testing.assert_close(unit[0].norm(dim=-1), torch.ones(2, dtype=torch.float64))


def test_a_reward_model_checkpoint_gives_the_state_its_score_head_reads(tiny_reward_model_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    fm = FeatureModel(tiny_reward_model_path)  # a Qwen2ForSequenceClassification saved with save_pretrained
    assert fm.reward_model and fm.last_token
    rows = [
        {"prompt": "What is the capital of France?", "completions": ["Paris.", "It is Paris, the capital of France."]},
        {"prompt": "Two plus two?", "completions": ["four", "Two plus two equals four, and three times three nine."]},
    ]
    features = fm.encode_pools(rows, "prompt", "completions", 2)  # one padded batch of uneven lengths
    reward_model = AutoModelForSequenceClassification.from_pretrained(tiny_reward_model_path).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_reward_model_path)
    head = reward_model.score.weight[0]
    for b in range(2):
        for i in range(2):
            ids = _chat_inputs(tokenizer, rows[b]["prompt"], rows[b]["completions"][i])
            assert ids["input_ids"][0, -1] != reward_model.config.pad_token_id  # the head reads the last token
            with torch.no_grad():
                backbone = reward_model.model(**ids).last_hidden_state[0, -1]
                score = reward_model(**ids).logits[0, 0]
            torch.testing.assert_close(features[b, i], backbone, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(score, head @ features[b, i], rtol=1e-4, atol=1e-5)
    # and the reward-model annotator's labels are that head applied to these features: the same text, the same token
    annotator = RewardModelAnnotator(tiny_reward_model_path, device="cpu")
    labels = annotator.score([AnnotationRequest(prompt=r["prompt"], completions=r["completions"]) for r in rows])
    torch.testing.assert_close(torch.tensor(labels), features @ head.detach(), rtol=1e-4, atol=1e-5)


def test_an_encoder_reward_model_is_read_at_its_first_token(tmp_path, tiny_tokenizer):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tiny_tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=256,
        pad_token_id=tiny_tokenizer.pad_token_id,
        num_labels=1,
    )
    BertForSequenceClassification(config).save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    fm = FeatureModel(str(tmp_path))
    assert fm.reward_model and fm.pooling == "first_token"  # BERT has a causal-LM head too, but is an encoder
    rows = [{"prompt": "Hi", "completions": ["Hello there.", "Hey"]}]
    features = fm.encode_pools(rows, "prompt", "completions", 2)
    reward_model = BertForSequenceClassification.from_pretrained(tmp_path).eval()
    for i in range(2):
        ids = _chat_inputs(fm.tokenizer, "Hi", rows[0]["completions"][i])
        with torch.no_grad():
            torch.testing.assert_close(features[0, i], reward_model.bert(**ids).last_hidden_state[0, 0], rtol=1e-4, atol=1e-5)  # fmt: skip
            score = reward_model(**ids).logits[0, 0]
            from_feature = reward_model.classifier(reward_model.bert.pooler(features[0, i][None, None]))[0, 0]
        torch.testing.assert_close(score, from_feature, rtol=1e-4, atol=1e-5)


def test_a_roberta_reward_model_without_a_pooler_is_read_at_its_first_token(tmp_path, tiny_tokenizer):
    """A `RobertaForSequenceClassification` checkpoint (RoBERTa, XLM-R reward models) has no pooler, which `AutoModel`
    builds: the missing pooler is not refused (no feature reads it), and the feature is the `<s>` hidden state the
    classification head reads, so the reward model's score is its head applied to the feature."""
    from transformers import RobertaConfig, RobertaForSequenceClassification

    torch.manual_seed(0)
    config = RobertaConfig(
        vocab_size=len(tiny_tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=256 + tiny_tokenizer.pad_token_id + 2,  # RoBERTa's positions start after the pad id
        pad_token_id=tiny_tokenizer.pad_token_id,
        num_labels=1,
    )
    RobertaForSequenceClassification(config).save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    fm = FeatureModel(str(tmp_path))
    assert fm.reward_model and fm.pooling == "first_token"
    rows = [{"prompt": "Hi", "completions": ["Hello there.", "Hey"]}]
    features = fm.encode_pools(rows, "prompt", "completions", 2)
    reward_model = RobertaForSequenceClassification.from_pretrained(tmp_path).eval()
    for i in range(2):
        ids = _chat_inputs(fm.tokenizer, "Hi", rows[0]["completions"][i])
        with torch.no_grad():
            hidden = reward_model.roberta(**ids).last_hidden_state[0, 0]
            torch.testing.assert_close(features[0, i], hidden, rtol=1e-4, atol=1e-5)
            score = reward_model(**ids).logits[0, 0]
            from_feature = reward_model.classifier(features[0, i][None, None])[0, 0]  # the head reads token 0 itself
        torch.testing.assert_close(score, from_feature, rtol=1e-4, atol=1e-5)


def test_a_model_that_cannot_load_is_refused(tmp_path):
    with pytest.raises(FeatureModelError, match="active_feature_model='.*nowhere'"):
        FeatureModel(str(tmp_path / "nowhere"))


def test_a_checkpoint_without_its_backbone_weights_or_finite_states_is_refused(tmp_path, tiny_tokenizer):
    from safetensors.torch import load_file, save_file

    from aepo_trainer.testing import build_tiny_causal_lm

    partial = build_tiny_causal_lm(tmp_path / "partial", hidden_size=16, tokenizer=tiny_tokenizer)
    weights = load_file(partial / "model.safetensors")
    broken = {k: v for k, v in weights.items() if "layers.0.mlp.up_proj" not in k}
    save_file(broken, partial / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(FeatureModelError, match=r"lacks 1 weights of its backbone \(layers\.0\.mlp\.up_proj"):
        FeatureModel(str(partial))
    nan = build_tiny_causal_lm(tmp_path / "nan", hidden_size=16, tokenizer=tiny_tokenizer)
    weights = load_file(nan / "model.safetensors")
    weights = {k: torch.full_like(v, math.nan) if "embed_tokens" in k else v for k, v in weights.items()}
    save_file(weights, nan / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(FeatureModelError, match="no finite hidden state"):
        FeatureModel(str(nan))


def test_the_config_needs_an_active_strategy(tmp_path):
    with pytest.raises(ValueError, match="active_feature_model"):
        AEPOConfig(output_dir=str(tmp_path), selection_strategy="random", active_feature_model="some/model")


def test_the_annotating_reward_model_is_refused_as_feature_model(tmp_path, tiny_reward_model_path, tiny_model_path):
    settings = dict(output_dir=str(tmp_path), bf16=False, selection_strategy="delta_ucb", annotator="reward_model")
    for same in (tiny_reward_model_path, tiny_reward_model_path + "/"):
        with pytest.raises(ValueError, match="is the reward model that annotates.*best-of-N"):
            AEPOConfig(**settings, reward_model_name_or_path=tiny_reward_model_path, active_feature_model=same)
    with pytest.raises(ValueError, match="is the reward model that annotates"):  # Hub ids compare case-insensitively
        AEPOConfig(**settings, reward_model_name_or_path="Org/RM-8B", active_feature_model="org/rm-8b")
    # another (cheaper) reward model, or the same one when it does not annotate, is fine
    AEPOConfig(**settings, reward_model_name_or_path="org/rm-8b", active_feature_model=tiny_reward_model_path)
    AEPOConfig(**{**settings, "annotator": "dataset_scores"}, active_feature_model=tiny_reward_model_path)


def test_the_trainer_refuses_a_reward_model_annotator_that_is_the_feature_model(
    tiny_model_path, tiny_reward_model_path, dpo_args
):
    class CountingRewardModel(RewardModelAnnotator):
        calls = model_uses = 0

        def score(self, requests):
            CountingRewardModel.calls += 1
            return super().score(requests)

        @property
        def model(self):  # the annotator's only way to its model (loaded on first use)
            CountingRewardModel.model_uses += 1
            return super().model

    annotator = CountingRewardModel(tiny_reward_model_path, device="cpu")
    with pytest.raises(ValueError, match="is the reward model that annotates"):
        make_trainer(tiny_model_path, dpo_args, annotator=annotator, selection_strategy="delta_ucb",
                     active_feature_model=tiny_reward_model_path)  # fmt: skip
    assert CountingRewardModel.calls == 0 and CountingRewardModel.model_uses == 0  # nothing scored, not even loaded


def test_select_uses_the_feature_model_and_refuses_a_bad_one_before_paying(
    tmp_path,
    pools,  # noqa: F811
    tiny_model_path,
    tiny_reward_model_path,
):
    from aepo_trainer.cli import main

    out = tmp_path / "pairs.jsonl"
    argv = ["select", "--input", str(pools), "--output", str(out), "--selection_strategy", "ucb_random", *ACTIVE]
    assert main([*argv, "--active_feature_model", str(tmp_path / "nowhere"), "--max_prompts", "16"]) == 2
    assert not out.exists() and not (tmp_path / "pairs.jsonl.annotations.sqlite").exists()  # nothing paid
    same = ["--annotator", "reward_model", "--reward_model_name_or_path", tiny_reward_model_path]
    assert main([*argv, *same, "--active_feature_model", tiny_reward_model_path, "--max_prompts", "16"]) == 2
    assert not out.exists() and not (tmp_path / "pairs.jsonl.annotations.sqlite").exists()
    assert main([*argv, "--active_feature_model", tiny_model_path, "--max_prompts", "16"]) == 0
    curve = read_jsonl(f"{out}.surrogate.jsonl")
    assert [q["labels_after"] for q in curve] == [16, 32] and curve[1]["pairs_evaluated"] > 0


def test_the_reducer_hands_the_hidden_states_to_the_surrogate(tmp_path, tiny_model_path):
    from aepo_trainer.reduction import PoolReducer

    config = AEPOConfig(
        output_dir=str(tmp_path), bf16=False, selection_strategy="delta_ucb", active_feature_model=tiny_model_path
    )
    reducer = PoolReducer(config)
    assert reducer.needed_signals == ()  # computed by the reducer itself: the trainer need not
    rows = [{"prompt": f"q{b}", "completions": [f"answer {b} {i}" for i in range(4)]} for b in range(3)]
    embeddings = torch.nn.functional.normalize(torch.randn(3, 4, 8), dim=-1)
    selected = reducer.select(rows, embeddings)
    hidden = selected.signals["hidden_states"]
    assert hidden.shape == (3, 4, reducer.feature_model.hidden_size)
    torch.testing.assert_close(hidden[2, 3], reducer.feature_model.encode_candidates([("q2", "answer 2 3")])[0])


def test_nonfinite_feature_model_states_are_counted_and_never_learned(tmp_path, tiny_model_path, monkeypatch):
    from aepo_trainer.annotation.ledger import AnnotationReply
    from aepo_trainer.reduction import PoolReducer

    config = AEPOConfig(
        output_dir=str(tmp_path), bf16=False, selection_strategy="delta_ucb", active_feature_model=tiny_model_path
    )
    reducer = PoolReducer(config)
    real = reducer.feature_model.encode_pools

    def with_an_infinity(*args):
        features = real(*args)
        features[0, :, 0] = math.inf  # every candidate of the first prompt
        return features

    monkeypatch.setattr(reducer.feature_model, "encode_pools", with_an_infinity)
    rows = [{"prompt": f"q{b}", "completions": [f"answer {b} {i}" for i in range(4)]} for b in range(3)]
    selected = reducer.select(rows, torch.nn.functional.normalize(torch.randn(3, 4, 8), dim=-1))
    scores = [[float(i) for i in subset] for subset in selected.subsets]
    reducer.finish(rows, selected, AnnotationReply(scores=scores))
    k = config.num_annotations
    assert reducer.active.nonfinite_features == k  # reported ...
    assert len(reducer.active.surrogate.export()) == 2 * k  # ... and never learned: only the two finite prompts


def test_the_trainer_uses_a_feature_model_of_another_vocabulary(tiny_model_path, other_vocabulary_model_path, dpo_args):
    from transformers import AutoTokenizer

    from aepo_trainer.selection.keys import prompt_key

    fm = FeatureModel.load(other_vocabulary_model_path)
    assert fm.tokenizer.get_vocab() != AutoTokenizer.from_pretrained(tiny_model_path).get_vocab()
    CountingScores.calls = 0
    rows = pool_rows(n=4, size=5)
    trainer = make_trainer(tiny_model_path, dpo_args, rows, annotator=CountingScores(), max_steps=1,
                           selection_strategy="delta_ucb", active_feature_model=other_vocabulary_model_path)  # fmt: skip
    before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    trainer.train()
    assert CountingScores.calls == 1
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.named_parameters())  # a real step
    labels = trainer.pool_reducer.active.surrogate.export()
    assert len(labels) == 2 * 2  # one step, two prompts, k = 2
    by_key = {prompt_key(r["prompt"]): r for r in rows}
    for pk, ck, features, _score in labels:
        row = by_key[pk]
        completion = next(c for c in row["completions"] if prompt_key(c) == ck)
        assert len(features) == 8 + 1 + 16  # embedding, log length, the feature model's hidden state
        state = fm.encode_candidates([(row["prompt"], completion)])[0].double()
        torch.testing.assert_close(torch.tensor(features[-16:], dtype=torch.float64), state / state.norm(), atol=1e-5, rtol=0)  # fmt: skip


def test_the_trainer_refuses_a_bad_feature_model_before_paying(tmp_path, tiny_model_path, dpo_args):
    CountingScores.calls = 0
    with pytest.raises(FeatureModelError, match="active_feature_model='.*nowhere'"):
        make_trainer(tiny_model_path, dpo_args, annotator=CountingScores(), selection_strategy="delta_ucb",
                     active_feature_model=str(tmp_path / "nowhere"))  # fmt: skip
    assert CountingScores.calls == 0
