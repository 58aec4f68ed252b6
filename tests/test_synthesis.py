"""Safer-Instruct (aepo_trainer.synthesis): templates, input hygiene, the resumable stages with counted fake experts,
the verdict parser, and the outputs as pools/pairs that AEPOTrainer trains on."""

from __future__ import annotations

import json

import pytest
from datasets import Dataset

from aepo_trainer.synthesis import (
    REVERSE_TEMPLATE,
    FunctionGenerator,
    SamplingConfig,
    StageCheckpoint,
    SynthesisReport,
    Verdict,
    build_dataset_card,
    build_reversed_dataset,
    clean_instruction,
    fill,
    induce_instructions,
    judge_instructions,
    keep_accepted,
    parse_verdict,
    prepare_texts,
    read_texts,
    to_candidate_pools,
    to_preference_pairs,
    write_expert_responses,
)

HAND_CHECKED_PROMPT = (
    "Below is a response to a certain instruction. Write the instruction that the response is trying to complete."
    "\n\n### Response:\nParis is the capital of France.\n\n### Instruction:"
)


# ------------------------------------------------------------------------------------------------ templates
def test_reversed_template_exactly_as_specified_on_a_hand_checked_row():
    rows = Dataset.from_list(
        [{"instruction": "What is the capital of France?", "output": "Paris is the capital of France."}]
    )
    out = build_reversed_dataset(rows)
    assert out.column_names == ["prompt", "completion"]
    assert out[0]["prompt"] == HAND_CHECKED_PROMPT
    assert out[0]["completion"] == " What is the capital of France?"
    assert REVERSE_TEMPLATE.replace("{response}", "Paris is the capital of France.") == HAND_CHECKED_PROMPT


def test_reversed_dataset_from_messages_alpaca_input_and_bad_rows():
    report = SynthesisReport()
    messages = Dataset.from_list(
        [
            {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi."},
                          {"role": "assistant", "content": "Hi!"}, {"role": "user", "content": "Again."},
                          {"role": "assistant", "content": "Hi again!"}]},
            {"messages": [{"role": "user", "content": "No answer."}]},
        ]
    )  # fmt: skip
    out = build_reversed_dataset(messages, report=report)
    assert out.to_list() == [{"prompt": fill(REVERSE_TEMPLATE, response="Hi!"), "completion": " Say hi."}]
    alpaca = Dataset.from_list(
        [
            {"instruction": "Translate.", "input": "Bonjour", "output": "Hello"},
            {"instruction": "Translate.", "input": "Bonjour", "output": "Hello"},
            {"instruction": "  ", "input": "", "output": "x"},
        ]
    )
    out = build_reversed_dataset(alpaca, report=report)
    assert out["completion"] == [" Translate.\n\nBonjour"]
    assert dict(report.skipped) == {"sft_empty": 2, "sft_duplicate": 1}
    custom = build_reversed_dataset(alpaca.select([0]), template="R: {response} {json} I:")
    assert custom[0]["prompt"] == "R: Hello {json} I:"  # other braces are kept
    with pytest.raises(ValueError, match="'instruction' and 'output' columns, or a 'messages' column"):
        build_reversed_dataset(Dataset.from_list([{"question": "q", "answer": "a"}]))


def test_fill_substitutes_in_one_pass():
    assert (
        fill("{text} / {instruction}", text="has {instruction} inside", instruction="I")
        == "has {instruction} inside / I"
    )
    with pytest.raises(ValueError, match="no {missing} placeholder"):
        fill("{text}", missing="x")


def test_long_responses_are_cut_to_keep_the_instruction_trainable(tiny_tokenizer):
    report = SynthesisReport()
    rows = Dataset.from_list([{"instruction": "Write a poem.", "output": "the sea and the wind " * 200}])
    out = build_reversed_dataset(rows, tokenizer=tiny_tokenizer, max_length=96, report=report)
    total = len(tiny_tokenizer(out[0]["prompt"] + out[0]["completion"])["input_ids"]) + 1  # + EOS
    assert total <= 96 and out[0]["completion"] == " Write a poem."
    assert any("cut 1 long response" in note for note in report.notes)


# ------------------------------------------------------------------------------------------------ reverse SFT
def test_completion_only_labels_mask_the_response(tiny_model_path, tiny_tokenizer, tmp_path):
    """SFTTrainer's own dataset preparation: labels are -100 on the reversal prompt (the response) and equal the
    input ids on the instruction and EOS only."""
    import torch
    from trl import SFTConfig

    from aepo_trainer.synthesis import make_reverse_sft_trainer

    rows = Dataset.from_list(
        [{"instruction": "What is the capital of France?", "output": "Paris is the capital of France."},
         {"instruction": "Add two and two.", "output": "Two plus two equals four."}]
    )  # fmt: skip
    reversed_ds = build_reversed_dataset(rows)
    args = SFTConfig(
        output_dir=str(tmp_path / "rev"), bf16=False, report_to="none", max_steps=1, per_device_train_batch_size=2,
        learning_rate=1e-2, save_strategy="no", activation_checkpointing=False, disable_tqdm=True,
        dataloader_pin_memory=False,
    )  # fmt: skip
    trainer = make_reverse_sft_trainer(tiny_model_path, reversed_ds, args, processing_class=tiny_tokenizer)
    assert trainer.args.completion_only_loss is True
    row = trainer.train_dataset[0]
    prompt_ids = tiny_tokenizer(HAND_CHECKED_PROMPT)["input_ids"]
    instruction_ids = tiny_tokenizer(HAND_CHECKED_PROMPT + " What is the capital of France?")["input_ids"]
    n = len(prompt_ids)
    assert row["input_ids"][:n] == prompt_ids
    assert row["labels"][:n] == [-100] * n  # the whole response (and the template) is masked
    assert row["labels"][n:] == row["input_ids"][n:]  # the instruction and EOS are trained
    assert row["input_ids"][n:-1] == instruction_ids[n:]
    assert row["input_ids"][-1] == tiny_tokenizer.eos_token_id
    before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    trainer.train()
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.named_parameters())
    args.completion_only_loss = False
    with pytest.raises(ValueError, match="completion_only_loss must be None or True"):
        make_reverse_sft_trainer(tiny_model_path, reversed_ds, args, processing_class=tiny_tokenizer)


# ------------------------------------------------------------------------------------------------ texts
def test_prepare_texts_counts_every_skip(tiny_tokenizer):
    report = SynthesisReport()
    rows = [
        {"id": "a", "text": " The quick brown fox. "}, {"id": "b", "text": ""}, {"id": "c", "text": " \n\t "},
        {"id": "d", "text": "The quick brown fox."}, {"id": "e", "text": "bad \udcff surrogate"},
        {"id": "g", "text": b"caf\xe9"}, {"id": "h", "text": None}, {"id": "f", "text": "the lazy dog " * 50},
    ]  # fmt: skip
    out = prepare_texts(rows, id_column="id", tokenizer=tiny_tokenizer, max_text_tokens=20, report=report)
    assert out["source_id"] == ["a", "f"]
    assert out["text"][0] == "The quick brown fox."
    assert out["truncated"] == [False, True]
    assert len(tiny_tokenizer(out["text"][1], add_special_tokens=False)["input_ids"]) <= 20
    assert dict(report.skipped) == {"empty": 2, "duplicate": 1, "non_utf8": 2, "not_text": 1}
    skipping = SynthesisReport()
    out = prepare_texts(rows, tokenizer=tiny_tokenizer, max_text_tokens=20, long_texts="skip", report=skipping)
    assert out["source_id"] == ["row-0"] and skipping.skipped["too_long"] == 1
    assert "too_long 1" in skipping.summary()


def test_read_texts_skips_lines_that_are_not_utf8(tmp_path):
    path = tmp_path / "texts.jsonl"
    path.write_bytes(b'{"text": "good"}\n{"text": "caf\xe9"}\n{"text": 7}\n\n{"text": "also good"}\n')
    report = SynthesisReport()
    data = read_texts(str(path), report=report)
    assert data["text"] == ["good", "also good"]
    assert dict(report.skipped) == {"non_utf8": 1, "not_text": 1}
    (tmp_path / "t.txt").write_bytes(b"one\n\xff\xfe\ntwo\n")
    assert read_texts(str(tmp_path / "t.txt"), report=report)["text"] == ["one", "two"]
    assert report.skipped["non_utf8"] == 2


# ------------------------------------------------------------------------------------------------ fakes
class CountingExpert:
    """A fake text generator: counts every prompt it is asked, and can fail on a given call (a killed run)."""

    def __init__(self, reply, fail_on_call: int | None = None):
        self.reply, self.fail_on_call = reply, fail_on_call
        self.asked: list = []
        self.calls = 0
        self.generator = FunctionGenerator(self._fn, identity="fake-expert-v1", price_input_per_1m=1.0,
                                           price_output_per_1m=2.0)  # fmt: skip

    def _fn(self, prompts, n, sampling):
        self.calls += 1
        if self.fail_on_call is not None and self.calls == self.fail_on_call:
            raise KeyboardInterrupt  # the run is killed in the middle of this call
        self.asked.extend(json.dumps(p) for p in prompts)
        return [[self.reply(p, i) for i in range(n)] for p in prompts]


def _content(prompt):
    return prompt if isinstance(prompt, str) else prompt[-1]["content"]


def _texts(n=5):
    return prepare_texts(Dataset.from_list([{"text": f"Response number {i}: the sea is blue."} for i in range(n)]))


def test_interrupted_stages_resume_without_calling_the_expert_twice(tmp_path):
    path = tmp_path / "checkpoint.sqlite"
    texts = _texts(5)

    def instruction(prompt, i):
        return f"Describe item {_content(prompt).split('number ')[1][0]} (variant {i})."

    killed = CountingExpert(instruction, fail_on_call=2)
    with pytest.raises(KeyboardInterrupt):
        induce_instructions(texts, killed.generator, num_instructions=2, checkpoint=StageCheckpoint(path),
                            batch_size=2, progress=False)  # fmt: skip
    assert len(killed.asked) == 2  # the first batch finished and was committed; the second was in flight
    resumed = CountingExpert(instruction)
    report = SynthesisReport()
    induced = induce_instructions(texts, resumed.generator, num_instructions=2, checkpoint=StageCheckpoint(path),
                                  batch_size=2, report=report, progress=False)  # fmt: skip
    assert len(resumed.asked) == 3  # only the 3 unfinished texts
    assert not set(killed.asked) & set(resumed.asked)  # no finished text was asked again
    assert report.new["induce"] == 3 and report.reused["induce"] == 2
    assert len(induced) == 10 and induced[0]["instruction"] == "Describe item 0 (variant 0)."
    assert induced[0]["provenance"]["induce"]["model"] == "fake-expert-v1"
    again = CountingExpert(instruction)
    induce_instructions(texts, again.generator, num_instructions=2, checkpoint=StageCheckpoint(path), progress=False)
    assert again.calls == 0  # cached

    judge_killed = CountingExpert(lambda p, i: "Verdict: PASS\nReason: fine.", fail_on_call=3)
    with pytest.raises(KeyboardInterrupt):
        judge_instructions(induced, judge_killed.generator, checkpoint=StageCheckpoint(path), batch_size=4,
                           progress=False)  # fmt: skip
    judge = CountingExpert(lambda p, i: "Verdict: PASS\nReason: fine.")
    judged = judge_instructions(induced, judge.generator, checkpoint=StageCheckpoint(path), batch_size=4,
                                progress=False)  # fmt: skip
    assert len(judge_killed.asked) == 8 and len(judge.asked) == 2
    assert not set(judge_killed.asked) & set(judge.asked)
    assert judged["verdict"] == ["pass"] * 10

    expert_killed = CountingExpert(lambda p, i: f"Answer {i}.", fail_on_call=2)
    with pytest.raises(KeyboardInterrupt):
        write_expert_responses(judged, expert_killed.generator, num_responses=2, checkpoint=StageCheckpoint(path),
                               batch_size=6, progress=False)  # fmt: skip
    expert = CountingExpert(lambda p, i: f"Answer {i}.")
    responded = write_expert_responses(judged, expert.generator, num_responses=2, checkpoint=StageCheckpoint(path),
                                       batch_size=6, progress=False)  # fmt: skip
    assert len(expert_killed.asked) == 6 and len(expert.asked) == 4
    assert responded[0]["expert_responses"] == ["Answer 0.", "Answer 1."]
    usage = StageCheckpoint(path, read_only=True).usage("respond")
    assert usage.prompts == 10 and usage.calls == 2 and usage.cost_usd > 0


def test_changed_settings_are_not_served_stale_outputs(tmp_path):
    path = tmp_path / "c.sqlite"
    texts = _texts(2)
    first = CountingExpert(lambda p, i: "Say something.")
    induce_instructions(texts, first.generator, checkpoint=StageCheckpoint(path), progress=False)
    second = CountingExpert(lambda p, i: "Say something else.")
    out = induce_instructions(texts, second.generator, checkpoint=StageCheckpoint(path), progress=False,
                              sampling=SamplingConfig(temperature=0.1))  # fmt: skip
    assert second.calls == 1 and out["instruction"] == ["Say something else."] * 2


def test_induced_candidates_are_cleaned_and_deduplicated():
    replies = iter(["  Write a haiku.\n### Response:\nleaves", "Write a haiku.", "   "])
    fake = FunctionGenerator(lambda prompts, n, s: [[next(replies) for _ in range(n)] for _ in prompts], "fake")
    report = SynthesisReport()
    out = induce_instructions(_texts(1), fake, num_instructions=3, report=report, progress=False)
    assert out["instruction"] == ["Write a haiku."]
    assert dict(report.skipped) == {"duplicate_instruction": 1, "empty_instruction": 1}
    assert clean_instruction("###") == "" and clean_instruction("A\nB") == "A\nB"


# ------------------------------------------------------------------------------------------------ filtering
PASS_ = Verdict(True, None, "")


@pytest.mark.parametrize(
    ("reply", "require_harmful", "expected"),
    [
        ("Verdict: PASS\nReason: Clear and on topic.", False, Verdict(True, None, "Clear and on topic.")),
        ("verdict: fail\nreason: asks two things", False, Verdict(False, None, "asks two things")),
        ("**Verdict:** PASS\n**Reason:** fine", False, Verdict(True, None, "fine")),
        ("- Verdict: Pass.\n- Reason: ok", False, Verdict(True, None, "ok")),
        ("Verdict = yes", False, PASS_),
        (
            "Sure! Here is my judgement.\nVerdict: FAIL (not self-contained)\nReason: refers to 'the text'.",
            False,
            Verdict(False, None, "refers to 'the text'."),
        ),
        ("Verdict: PASS\nReason: spans\ntwo lines", False, Verdict(True, None, "spans two lines")),
        ('{"verdict": "FAIL", "reason": "incoherent"}', False, Verdict(False, None, "incoherent")),
        ('```json\n{"Verdict": "pass", "Harmful": "yes", "Reason": "r"}\n```', True, Verdict(True, True, "r")),
        ("Verdict: PASS\nHarmful: YES\nReason: slur", True, Verdict(True, True, "slur")),
        ("Verdict: PASS\nHarmful: no\nReason: benign", True, Verdict(True, False, "benign")),
        ("Verdict: PASS\nHarmful: NO", False, Verdict(True, False, "")),
        ("Verdict: PASS\nReason: harmful part missing", True, None),
        ("Verdict: PASS\nVerdict: FAIL", False, None),
        ("Verdict: PASS\nHarmful: YES\nHarmful: NO", True, None),
        ("Verdict: maybe", False, None),
        ("The instruction looks fine to me.", False, None),
        ("PASS", False, None),
        ("", False, None),
        ('{"reason": "no verdict key"}', False, None),
    ],
)
def test_parse_verdict_table(reply, require_harmful, expected):
    assert parse_verdict(reply, require_harmful=require_harmful) == expected


def _induced(n=3):
    texts = _texts(n)
    fake = FunctionGenerator(lambda prompts, k, s: [[f"Instruction {j}."] for j, _ in enumerate(prompts)], "fake")
    return induce_instructions(texts, fake, progress=False)


def test_unparseable_verdicts_are_retried_then_marked_never_passed():
    calls = []

    def judge(prompts, n, sampling):
        calls.append((len(prompts), sampling.seed, "could not be read" in prompts[0][0]["content"]))
        out = []
        for p in prompts:
            content = p[0]["content"]
            if "Instruction 0." in content:
                out.append(["Verdict: PASS\nReason: fine"])
            elif "Instruction 1." in content and "could not be read" in content:
                out.append(["Verdict: FAIL\nReason: vague"])
            else:
                out.append(["I like it!"])
        return out

    report = SynthesisReport()
    judged = judge_instructions(
        _induced(3), FunctionGenerator(judge, "judge"), retries=2, report=report, progress=False
    )
    assert judged["verdict"] == ["pass", "fail", "unparsed"]
    assert judged["judge_attempts"] == [1, 2, 3]
    assert judged["verdict_reason"] == ["fine", "vague", ""]
    assert judged["judge_output"][2] == "I like it!"
    assert calls == [(3, 0, False), (2, 1, True), (1, 2, True)]  # only unparsed rows are asked again
    kept = keep_accepted(judged, report=report)
    assert kept["instruction"] == ["Instruction 0."]
    assert report.skipped["rejected_by_judge"] == 1 and report.skipped["unparsed_verdict"] == 1
    marked = keep_accepted(judged, keep_unparsed=True, report=report)
    assert marked["verdict"] == ["pass", "unparsed"]


def test_safety_rubric_keeps_harmful_texts_only():
    replies = {"Instruction 0.": "Verdict: PASS\nHarmful: YES\nReason: r", "Instruction 1.": "Verdict: PASS\nHarmful: NO\nReason: r",
               "Instruction 2.": "Verdict: PASS\nReason: forgot harmful"}  # fmt: skip

    def judge(prompts, n, sampling):
        content = [p[0]["content"] for p in prompts]
        assert all("Harmful: YES or NO" in c for c in content)
        return [[next(v for k, v in replies.items() if k in c)] for c in content]

    report = SynthesisReport()
    judged = judge_instructions(
        _induced(3), FunctionGenerator(judge, "judge"), rubric="safety", retries=0, progress=False
    )
    assert judged["harmful"] == [True, False, None] and judged["verdict"] == ["pass", "pass", "unparsed"]
    kept = keep_accepted(judged, report=report)
    assert kept["instruction"] == ["Instruction 0."]
    assert report.skipped["not_harmful"] == 1 and report.skipped["unparsed_verdict"] == 1
    assert len(keep_accepted(judged, require_harmful=False)) == 2


# ------------------------------------------------------------------------------------------------ outputs
def _responded():
    judged = judge_instructions(_induced(4), FunctionGenerator(lambda p, n, s: [["Verdict: PASS\nReason: ok"]] * len(p), "j"), progress=False)  # fmt: skip
    expert = FunctionGenerator(lambda p, n, s: [[f"A careful answer {i}." for i in range(n)] for _ in p], "expert")
    return write_expert_responses(keep_accepted(judged), expert, num_responses=2, progress=False)


def test_outputs_are_valid_pairs_and_pools_with_provenance():
    from aepo_trainer import AEPOConfig
    from aepo_trainer.data.pools import is_pool_dataset, validate_pool_dataset

    responded = _responded()
    pairs = to_preference_pairs(responded)
    assert pairs[0]["prompt"] == "Instruction 0."
    assert pairs[0]["chosen"] == "A careful answer 0." and pairs[0]["rejected"] == "Response number 0: the sea is blue."
    assert set(pairs[0]["provenance"]) == {"source_id", "text_sha256", "truncated", "induce", "filter", "respond"}
    assert len(to_preference_pairs(responded, all_responses=True)) == 8
    pools = to_candidate_pools(responded)
    assert pools[0]["completions"] == [
        "Response number 0: the sea is blue.",
        "A careful answer 0.",
        "A careful answer 1.",
    ]
    assert pools[0]["completion_sources"] == ["original", "expert", "expert"]
    args = AEPOConfig(output_dir="unused", bf16=False, report_to="none", num_annotations=2)
    validate_pool_dataset(pools, args)
    assert is_pool_dataset(pools, args) and not is_pool_dataset(pairs, args)
    chat = to_candidate_pools(responded, conversational=True)
    validate_pool_dataset(chat, args)
    assert chat[0]["prompt"] == [{"role": "user", "content": "Instruction 0."}]


def test_dataset_card_records_settings_and_counts(tmp_path):
    from huggingface_hub import DatasetCard

    from aepo_trainer.synthesis import save_outputs

    report = SynthesisReport()
    report.skip("duplicate", 3)
    responded = _responded()
    card = build_dataset_card(report, {"judge_model": "my-judge"})
    written = save_outputs(to_preference_pairs(responded), to_candidate_pools(responded), card, tmp_path)
    loaded = DatasetCard.load(written["README.md"])
    assert "safer-instruct" in loaded.data.tags
    assert "duplicate 3" in loaded.text and '"judge_model": "my-judge"' in loaded.text
    assert REVERSE_TEMPLATE in loaded.text
    assert len((tmp_path / "pairs.jsonl").read_text().splitlines()) == 4


@pytest.mark.parametrize("kind", ["pairs", "pools"])
def test_outputs_train_one_aepo_step(kind, tiny_model_path, tiny_tokenizer, minilm_path, dpo_args):
    import torch
    from transformers import AutoModelForCausalLM

    from aepo_trainer import AEPOConfig, AEPOTrainer

    responded = _responded()
    dataset = to_preference_pairs(responded) if kind == "pairs" else to_candidate_pools(responded)
    dataset = dataset.select_columns(["prompt", "chosen", "rejected"] if kind == "pairs" else ["prompt", "completions"])
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    trainer = AEPOTrainer(
        model=model,
        ref_model=AutoModelForCausalLM.from_pretrained(tiny_model_path),
        args=AEPOConfig(
            **{**dpo_args, "max_steps": 1, "max_length": 64}, num_annotations=2, embedding_model=minilm_path
        ),
        train_dataset=dataset,
        processing_class=tiny_tokenizer,
        annotator=lambda prompts, completions, **_: [float(len(c)) for c in completions],
    )
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    trainer.train()
    assert trainer.state.global_step == 1
    assert any(not torch.equal(before[k], v) for k, v in model.named_parameters())


# ------------------------------------------------------------------------------------------------ local generator
def test_transformers_generator_batches_counts_usage_and_is_reproducible(tiny_model_path, tiny_tokenizer):
    from aepo_trainer.synthesis import TextGenerator, TransformersGenerator

    generator = TransformersGenerator(tiny_model_path, batch_size=2, price_input_per_1m=1.0)
    assert isinstance(generator, TextGenerator) and generator.identity == f"transformers:{tiny_model_path}"
    prompts = ["The sky is", [{"role": "user", "content": "What is two plus two?"}], "Paris is"]
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=5)
    first = generator.generate(prompts, 2, greedy)
    assert len(first) == 3 and all(len(texts) == 2 and all(isinstance(t, str) for t in texts) for texts in first)
    assert first[0][0] == first[0][1]  # greedy: decoded once, the same text twice
    assert generator.usage.calls == 2  # 3 prompts, batch_size 2
    chat_ids = tiny_tokenizer.apply_chat_template(prompts[1], add_generation_prompt=True, tokenize=False)
    expected_prompt_tokens = (
        len(tiny_tokenizer("The sky is")["input_ids"])
        + len(tiny_tokenizer(chat_ids, add_special_tokens=False)["input_ids"])
        + len(tiny_tokenizer("Paris is")["input_ids"])
    )
    assert generator.usage.prompt_tokens == expected_prompt_tokens
    assert 0 < generator.usage.completion_tokens <= 3 * 5
    assert generator.usage.cost_usd == pytest.approx(expected_prompt_tokens / 1e6)
    sampled = SamplingConfig(temperature=1.0, max_new_tokens=5, seed=3)
    assert generator.generate(prompts[:1], 3, sampled) == generator.generate(prompts[:1], 3, sampled)
    short = TransformersGenerator(tiny_model_path, max_prompt_tokens=3)
    short.generate(["The quick brown fox jumps over the lazy dog."], 1, greedy)
    assert short.truncated_prompts == 1


KILLED_WORKER = """
import json, os, signal, sys
from datasets import Dataset
from aepo_trainer.synthesis import FunctionGenerator, StageCheckpoint, induce_instructions, prepare_texts

calls = []
def fn(prompts, n, sampling):
    calls.append(len(prompts))
    if len(calls) == 3:
        os.kill(os.getpid(), signal.SIGKILL)  # a hard kill in the middle of the third model call
    with open(sys.argv[2], "a") as f:
        f.write(json.dumps(prompts) + "\\n")
    return [["Describe it."] for _ in prompts]

texts = prepare_texts(Dataset.from_list([{"text": f"Text {i}."} for i in range(7)]))
induce_instructions(texts, FunctionGenerator(fn, "fake"), checkpoint=StageCheckpoint(sys.argv[1]), batch_size=2,
                    progress=False)
"""


def test_a_hard_killed_stage_keeps_every_committed_batch(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    path, asked = tmp_path / "checkpoint.sqlite", tmp_path / "asked.jsonl"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", KILLED_WORKER, str(path), str(asked)], env=env, capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert len(asked.read_text().splitlines()) == 2  # two batches of 2 texts were answered before the kill
    resumed = CountingExpert(lambda p, i: "Describe it.")
    resumed.generator.identity = "fake"  # the same model as in the killed run
    texts = prepare_texts(Dataset.from_list([{"text": f"Text {i}."} for i in range(7)]))
    out = induce_instructions(texts, resumed.generator, checkpoint=StageCheckpoint(path), batch_size=2, progress=False)
    assert len(resumed.asked) == 3 and len(out) == 7  # only the 3 texts that were never committed
    before = {p for line in asked.read_text().splitlines() for p in json.loads(line)}
    assert not before & {json.loads(p) for p in resumed.asked}


def test_bad_rows_are_named_before_any_model_call():
    never = CountingExpert(lambda p, i: "x")
    bad = Dataset.from_list([{"text": "fine", "instruction": "Do it."}, {"text": "fine", "instruction": "  "}])
    with pytest.raises(ValueError, match="filter: row 1, field 'instruction': expected a non-empty string"):
        judge_instructions(bad, never.generator, progress=False)
    with pytest.raises(ValueError, match="induce: row 0, field 'source_id': expected a non-empty string, got missing"):
        induce_instructions(Dataset.from_list([{"text": "raw, not prepared"}]), never.generator, progress=False)
    assert never.calls == 0
