"""AEPOConfig: defaults, validation messages that name the field and the allowed values, CLI parsing."""

from __future__ import annotations

import pytest
from trl import DPOConfig, TrlParser

from aepo_trainer import AEPOConfig
from aepo_trainer.config import RPO_LOSS_TYPES, SELECTION_STRATEGIES


def _config(tmp_path, **kwargs):
    return AEPOConfig(output_dir=str(tmp_path), bf16=False, report_to="none", **kwargs)


def test_defaults(tmp_path):
    config = _config(tmp_path)
    assert isinstance(config, DPOConfig)
    assert config.num_annotations == 2
    assert config.diversity_weight == 1.0
    assert config.selection_strategy == "random"  # issue 27: the default never buys worse pairs than random
    assert config.embedding_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert config.completions_column == "completions"
    assert config.scores_column == "scores"
    assert config.annotation_budget is None
    assert config.effective_selection_seed == config.seed
    assert config.loss_type == ["sigmoid"]


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("num_annotations", 1, "an integer >= 2"),
        ("num_annotations", 2.5, "an integer >= 2"),
        ("diversity_weight", -0.5, "a finite number >= 0"),
        ("diversity_weight", float("nan"), "a finite number >= 0"),
        ("selection_strategy", "greedy", "one of 'aepo', 'random', 'west_of_n', 'representativeness', 'kmedoids'"),
        ("selection_search", "beam", "one of 'auto', 'greedy', 'exhaustive'"),
        ("annotator", "oracle", "one of 'dataset_scores', 'reward_model', 'judge', 'self_judge', 'api_judge', 'human'"),
        ("annotation_budget", -1, "None (unlimited) or an integer >= 0"),
        ("pairing_rule", "worst_vs_best", "one of 'best_vs_worst', 'all_pairs', 'best_vs_random'"),
        ("reward_scale", 0.0, "a finite number > 0"),
        ("completions_column", "", "a non-empty column name"),
        ("active_safety_test", "recent", "one of 'prequential', 'prequential_recent', 'cross_validated'"),
        ("active_safety_window", 0, "an integer >= 1"),
        ("active_safety_window", True, "an integer >= 1"),
    ],
)
def test_invalid_values_name_the_field_and_the_allowed_values(tmp_path, field, value, expected):
    with pytest.raises(ValueError) as error:
        _config(tmp_path, **{field: value})
    message = str(error.value)
    assert f"AEPOConfig.{field}={value!r}" in message
    assert expected in message


def test_reward_model_annotator_needs_a_model(tmp_path):
    with pytest.raises(ValueError, match="reward_model_name_or_path"):
        _config(tmp_path, annotator="reward_model")
    assert _config(tmp_path, annotator="reward_model", reward_model_name_or_path="org/rm").annotator == "reward_model"


def test_rpo_loss_types_mix_with_trl_loss_types(tmp_path):
    config = _config(tmp_path, loss_type=["sigmoid", "rpo_sq"], loss_weights=[1.0, 0.5])
    assert config.rpo_loss_types == ["rpo_sq"]
    assert set(RPO_LOSS_TYPES) == {"rpo_sq", "rpo_bwd_kl", "rpo_fwd_kl"}


def test_every_aepo_field_has_help():
    import dataclasses

    dpo_fields = {f.name for f in dataclasses.fields(DPOConfig)}
    for f in dataclasses.fields(AEPOConfig):
        if f.name not in dpo_fields:
            assert f.metadata.get("help"), f.name


def test_trl_parser_reads_aepo_fields(tmp_path):
    parser = TrlParser((AEPOConfig,))
    (config,) = parser.parse_args_and_config(
        [
            "--output_dir",
            str(tmp_path),
            "--bf16",
            "false",
            "--report_to",
            "none",
            "--num_annotations",
            "4",
            "--diversity_weight",
            "0.5",
            "--selection_strategy",
            "kmedoids",
            "--annotation_budget",
            "100",
        ]
    )
    assert config.num_annotations == 4 and config.diversity_weight == 0.5
    assert config.selection_strategy == "kmedoids" and config.annotation_budget == 100
    assert "kmedoids" in SELECTION_STRATEGIES


def test_aepo_settings_for_model_cards(tmp_path):
    settings = _config(tmp_path, num_annotations=3, selection_seed=7).aepo_settings()
    assert settings["num_annotations"] == 3 and settings["selection_seed"] == 7
    assert settings["loss_type"] == ["sigmoid"]
    # the embedder settings that change the embeddings (and so the selections) are recorded
    assert (settings["embedding_backend"], settings["embedding_quantized"], settings["embedding_max_length"]) == (
        "torch",
        False,
        None,
    )
