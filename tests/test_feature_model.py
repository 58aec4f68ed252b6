"""The surrogate's feature model (`active_feature_model`, issue 27): the features equal an independent computation,
`aepo select` uses them, and a model that cannot serve is refused before anything is embedded or paid."""

from __future__ import annotations

import pytest
import torch
from test_active_cli import ACTIVE, pools  # noqa: F401 - the module's pools fixture
from test_cli import read_jsonl

from aepo_trainer import AEPOConfig
from aepo_trainer.selection.feature_model import FeatureModel, FeatureModelError
from aepo_trainer.selection.surrogate import hidden_state_feature


def test_features_are_the_last_tokens_last_hidden_state(tiny_model_path):
    from transformers import AutoModel, AutoTokenizer

    fm = FeatureModel(tiny_model_path)
    assert fm.last_token  # a causal LM: its last token's state
    rows = [
        {"prompt": "Sort 3 1 2", "completions": ["1 2 3", "3 2 1 and more words here"]},
        {"prompt": "Hi", "completions": ["Hello"]},
    ]
    features = fm.encode_pools(rows, "prompt", "completions", 2)
    assert features.shape == (2, 2, fm.hidden_size) and torch.isnan(features[1, 1]).all()  # padding
    tokenizer, model = AutoTokenizer.from_pretrained(tiny_model_path), AutoModel.from_pretrained(tiny_model_path)
    for b, i in ((0, 0), (0, 1), (1, 0)):
        ids = tokenizer(f"{rows[b]['prompt']}\n\n{rows[b]['completions'][i]}", return_tensors="pt")
        with torch.no_grad():
            expected = model(**ids).last_hidden_state[0, -1]
        torch.testing.assert_close(features[b, i], expected, rtol=1e-4, atol=1e-5)  # padding changes nothing
    mask = torch.tensor([[True, True], [True, False]])
    unit = hidden_state_feature(rows, None, mask, "completions", hidden_states=features.double())
    torch.testing.assert_close(unit[0].norm(dim=-1), torch.ones(2, dtype=torch.float64))


def test_a_model_that_cannot_load_is_refused(tmp_path):
    with pytest.raises(FeatureModelError, match="active_feature_model='.*nowhere'"):
        FeatureModel(str(tmp_path / "nowhere"))


def test_the_config_needs_an_active_strategy(tmp_path):
    with pytest.raises(ValueError, match="active_feature_model"):
        AEPOConfig(output_dir=str(tmp_path), selection_strategy="random", active_feature_model="some/model")


def test_select_uses_the_feature_model_and_refuses_a_bad_one_before_paying(tmp_path, pools, tiny_model_path):  # noqa: F811
    from aepo_trainer.cli import main

    out = tmp_path / "pairs.jsonl"
    argv = ["select", "--input", str(pools), "--output", str(out), "--selection_strategy", "ucb_random", *ACTIVE]
    assert main([*argv, "--active_feature_model", str(tmp_path / "nowhere"), "--max_prompts", "16"]) == 2
    assert not out.exists() and not (tmp_path / "pairs.jsonl.annotations.sqlite").exists()  # nothing paid
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
    torch.testing.assert_close(hidden[2, 3], reducer.feature_model.encode_texts(["q2\n\nanswer 2 3"])[0])
