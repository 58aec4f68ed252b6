"""JSFT (SELF-JUDGE's judge-augmented SFT): the builder's exact output, the mixing ratio, and `aepo jsft` training."""

from __future__ import annotations

import json

import pytest
import torch

from aepo_trainer.self_judge.jsft import build_jsft_dataset, build_jsft_examples

TEMPLATE = "Q: {prompt}\nA: {response_a}\nB: {response_b}\nBetter?"
ROWS = [
    {"prompt": "2+2?", "chosen": "4", "rejected": "5"},
    {"prompt": "Capital of France?", "chosen": "Paris", "rejected": "Rome"},
    {"prompt": "2+2?", "chosen": "4", "rejected": "22"},  # same prompt and chosen: one SFT example only
]


def _user(text):
    return [{"role": "user", "content": text}]


def _assistant(text):
    return [{"role": "assistant", "content": text}]


def test_exact_output_on_a_hand_checked_example():
    # 3 pairs -> 6 judgment examples; 2 distinct (prompt, chosen) -> 2 SFT examples; 6 / 8 = 0.75 uses everything
    out = build_jsft_examples(ROWS, judge_fraction=0.75, template=TEMPLATE, shuffle=False)
    assert out == [
        {"prompt": _user("Q: 2+2?\nA: 4\nB: 5\nBetter?"), "completion": _assistant("A"), "kind": "judge"},
        {"prompt": _user("Q: 2+2?\nA: 5\nB: 4\nBetter?"), "completion": _assistant("B"), "kind": "judge"},
        {
            "prompt": _user("Q: Capital of France?\nA: Paris\nB: Rome\nBetter?"),
            "completion": _assistant("A"),
            "kind": "judge",
        },
        {
            "prompt": _user("Q: Capital of France?\nA: Rome\nB: Paris\nBetter?"),
            "completion": _assistant("B"),
            "kind": "judge",
        },
        {"prompt": _user("Q: 2+2?\nA: 4\nB: 22\nBetter?"), "completion": _assistant("A"), "kind": "judge"},
        {"prompt": _user("Q: 2+2?\nA: 22\nB: 4\nBetter?"), "completion": _assistant("B"), "kind": "judge"},
        {"prompt": _user("2+2?"), "completion": _assistant("4"), "kind": "sft"},
        {"prompt": _user("Capital of France?"), "completion": _assistant("Paris"), "kind": "sft"},
    ]


def test_plain_text_format_and_conversational_rows():
    (a, b) = build_jsft_examples(ROWS[:1], judge_fraction=1.0, template=TEMPLATE, chat=False, shuffle=False)
    assert a == {"prompt": "Q: 2+2?\nA: 4\nB: 5\nBetter?\nAnswer:", "completion": " A", "kind": "judge"}
    assert b == {"prompt": "Q: 2+2?\nA: 5\nB: 4\nBetter?\nAnswer:", "completion": " B", "kind": "judge"}
    chat_row = {"prompt": _user("2+2?"), "chosen": _assistant("4"), "rejected": _assistant("5")}
    judge, sft = build_jsft_examples([chat_row], judge_fraction=0.5, template=TEMPLATE, shuffle=False)[1:]
    assert judge["prompt"] == _user("Q: user: 2+2?\nA: assistant: 5\nB: assistant: 4\nBetter?")
    assert sft == {"prompt": _user("2+2?"), "completion": _assistant("4"), "kind": "sft"}
    with pytest.raises(ValueError, match="chat=False needs strings"):
        build_jsft_examples([chat_row], chat=False)


@pytest.mark.parametrize("fraction, judge, sft", [(0.0, 0, 40), (1.0, 80, 0), (0.5, 40, 40), (0.8, 80, 20)])
def test_mixing_ratio_keeps_both_orders_together(fraction, judge, sft):
    rows = [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(40)]
    out = build_jsft_examples(rows, judge_fraction=fraction, seed=3)
    kinds = [e["kind"] for e in out]
    assert (kinds.count("judge"), kinds.count("sft")) == (judge, sft)
    questions = [e["prompt"][0]["content"] for e in out if e["kind"] == "judge"]
    for i in {q.split("\n")[3] for q in questions}:  # the "[Question]" line: every kept pair is there twice
        assert sum(q.split("\n")[3] == i for q in questions) == 2
    answers = {e["prompt"][0]["content"]: e["completion"][0]["content"] for e in out if e["kind"] == "judge"}
    for question, answer in answers.items():  # the good response's letter is always the answer
        good = "A" if "[Assistant A]\ngood" in question else "B"
        assert answer == good
    # seeded: the same call gives the same mixture; another seed shuffles differently
    assert out == build_jsft_examples(rows, judge_fraction=fraction, seed=3)
    if fraction == 0.5:
        assert out != build_jsft_examples(rows, judge_fraction=fraction, seed=4)


def test_bad_rows_name_the_row_and_column():
    with pytest.raises(ValueError, match="row 1 has no 'rejected' column"):
        build_jsft_examples([ROWS[0], {"prompt": "x", "chosen": "y"}])
    with pytest.raises(ValueError, match="row 0, column 'chosen'"):
        build_jsft_examples([{"prompt": "x", "chosen": "", "rejected": "z"}])
    with pytest.raises(ValueError, match="judge_fraction"):
        build_jsft_examples(ROWS, judge_fraction=1.5)


def test_training_text_is_what_the_judge_asks(tiny_tokenizer):
    """Trained on exactly the judge's question: the chat-rendered JSFT prompt equals `PairwiseJudgeAnnotator`'s text."""
    from aepo_trainer.annotation import PairwiseJudgeAnnotator

    judge = PairwiseJudgeAnnotator("unused", tokenizer=tiny_tokenizer, name="tiny")
    example = build_jsft_dataset(ROWS[:1], judge_fraction=1.0, shuffle=False)[0]
    rendered = tiny_tokenizer.apply_chat_template(example["prompt"], tokenize=False, add_generation_prompt=True)
    assert rendered == judge._judge_text("2+2?", "4", "5")
    assert example["completion"][0]["content"] == judge.choices[0]


def test_aepo_jsft_trains_with_sft_trainer(tmp_path, tiny_model_path):
    from transformers import AutoModelForCausalLM

    from aepo_trainer.cli import main

    data = tmp_path / "prefs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS * 2))
    config = tmp_path / "jsft.yaml"
    config.write_text(
        f"dataset_name: {data}\nmodel_name_or_path: {tiny_model_path}\noutput_dir: {tmp_path / 'out'}\n"
        "judge_fraction: 0.75\nmax_steps: 2\nper_device_train_batch_size: 4\nlearning_rate: 0.01\nbf16: false\n"
        "report_to: none\nsave_strategy: 'no'\nlogging_steps: 1\nactivation_checkpointing: false\ndtype: float32\n"
    )
    assert main(["jsft", "--config", str(config)]) == 0
    before = AutoModelForCausalLM.from_pretrained(tiny_model_path).state_dict()
    after = AutoModelForCausalLM.from_pretrained(tmp_path / "out").state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_aepo_jsft_bad_column_exits_2(tmp_path, tiny_model_path, capsys):
    from aepo_trainer.cli import main

    data = tmp_path / "prefs.jsonl"
    data.write_text(json.dumps({"prompt": "x", "chosen": "y"}) + "\n")
    common = ["jsft", "--dataset_name", str(data), "--model_name_or_path", tiny_model_path, "--output_dir", "o"]
    assert main([*common, "--bf16", "false"]) == 2
    assert "row 0 has no 'rejected' column" in capsys.readouterr().err
    if (
        not torch.cuda.is_available()
    ):  # bf16 (TRL's default) on a CPU: SFTConfig's own check, reported without traceback
        assert main([*common, "--judge_fraction", "0.5"]) == 2
        err = capsys.readouterr().err
        assert "bf16" in err and "Traceback" not in err
