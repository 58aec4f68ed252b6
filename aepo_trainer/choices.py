"""Every list of names a setting can take, in one place.

`AEPOConfig` validates against these tuples and exposes them as `choices` of its flags; the selection kernel, the
pairing rules, the annotator factory, the `aepo` CLI, the experiments and the docs read them from here. Adding a
strategy, an annotator or a pairing rule starts with adding its name here. The module imports nothing, so the CLI can
read it without importing torch.
"""

from __future__ import annotations

__all__ = [
    "ACTIVE_STRATEGIES",
    "ACTIVE_SURROGATES",
    "ANNOTATORS",
    "COLD_START_STRATEGIES",
    "EMBEDDING_BACKENDS",
    "EMPTY_COMPLETION_RULES",
    "GENERATE_BACKENDS",
    "GENERATOR_BACKENDS",
    "JUDGE_MODES",
    "JUDGE_RUBRICS",
    "LABELLER_ROLES",
    "LABEL_QUESTIONS",
    "LONG_TEXT_POLICIES",
    "PAIRING_RULES",
    "POLICY_PROMPT_SELECTIONS",
    "POLICY_SIGNALS_DTYPES",
    "POLICY_STRATEGIES",
    "PROMPT_SELECTIONS",
    "RPO_LOSS_TYPES",
    "SAFETY_TESTS",
    "SELECTION_SEARCHES",
    "SELECTION_STRATEGIES",
    "SELF_JUDGE_MODELS",
    "SYNTHESIS_STEPS",
    "VLLM_MODES",
]

#: The strategies that learn from the labels already paid for (`aepo_trainer.selection.active`): a reward surrogate
#: fitted on the paid labels gives each candidate a posterior mean and uncertainty, and an acquisition picks the k.
ACTIVE_STRATEGIES = (
    "delta_ucb",
    "double_ts",
    "double_reversed_ts",
    "max_min_lcb",
    "info_max",
    "ucb_random",
    "aepo_ucb",
)
#: The reward surrogates of the active strategies (`AEPOConfig.active_surrogate`): closed-form Bayesian linear
#: regression (`selection/surrogate.py`) or an ensemble of randomized-prior, bootstrapped heads (`selection/ensemble.py`).
ACTIVE_SURROGATES = ("bayesian_linear", "ensemble")
#: How the safety rule tests the surrogate out of sample (`AEPOConfig.active_safety_test`, `selection/safety.py`):
#: each prompt's labels tested once by the surrogate as it was when they arrived (prequential, the default), or K-fold
#: cross-validation of the CURRENT fit over every labelled prompt.
SAFETY_TESTS = ("prequential", "cross_validated")
#: The strategies that read the policy being trained (`selection.implicit_reward.select_implicit_reward_gap`): each
#: candidate's implicit reward beta * (log pi - log pi_ref) is computed in the training step, so only `AEPOTrainer`
#: can select with them (`aepo select` refuses them: it has no policy).
POLICY_STRATEGIES = ("implicit_reward_gap",)
#: How k of N candidates are chosen (`AEPOConfig.selection_strategy`, `aepo select --selection_strategy`): the
#: embedding-only strategies of `select_subsets`, then the active ones, then the policy-aware ones (trainer only).
SELECTION_STRATEGIES = (
    "aepo",
    "random",
    "west_of_n",
    "representativeness",
    "kmedoids",
    *ACTIVE_STRATEGIES,
    *POLICY_STRATEGIES,
)
#: Which prompts of a window get labels when the budget covers fewer prompts than the data
#: (`AEPOConfig.prompt_selection`, `aepo_trainer.selection.prompts`): all of them (off), a keyed random share, greedy
#: D-optimal design on the selected pairs' features (APO), or the policy's implicit-reward spread (trainer only).
POLICY_PROMPT_SELECTIONS = ("implicit_reward_spread",)
#: `policy_signals_dtype`: "auto" scores the policy signals under the step's own autocast; "bfloat16" under bf16
#: autocast even when training in float32 (a faster pass; its reference log-probs are cached apart).
POLICY_SIGNALS_DTYPES = ("auto", "bfloat16")
PROMPT_SELECTIONS = ("all", "random", "d_optimal", *POLICY_PROMPT_SELECTIONS)
#: The strategies an active strategy may use until the surrogate has `active_warmup_annotations` labels.
COLD_START_STRATEGIES = ("random", "aepo", "representativeness", "kmedoids")
#: The search for k > 2 (`AEPOConfig.selection_search`).
SELECTION_SEARCHES = ("auto", "greedy", "exhaustive")
#: Where the sentence embedder runs (`AEPOConfig.embedding_backend`): the PyTorch model, or its ONNX export run by
#: ONNX Runtime or OpenVINO (faster on CPU; `aepo_trainer.embedding.backends`), or a static token table distilled
#: from it (`aepo_trainer.embedding.static`).
EMBEDDING_BACKENDS = ("torch", "onnx", "openvino", "static")
#: Who scores the selected candidates when no annotator object is passed (`AEPOConfig.annotator`).
ANNOTATORS = ("dataset_scores", "reward_model", "judge", "self_judge", "api_judge", "human")
#: How the `api_judge` annotator judges (`AEPOConfig.judge_mode`): pairwise (debiased, tournament) or a 1-10 rubric.
JUDGE_MODES = ("pairwise", "rubric")
#: Which weights judge for `annotator='self_judge'` (`AEPOConfig.self_judge_model`).
SELF_JUDGE_MODELS = ("current", "frozen")
#: What happens to an empty candidate (blank or invisible characters only) of a pool (`AEPOConfig.empty_completions`,
#: `aepo_trainer.data.empty_completions`): kept as a candidate, dropped from its pool before selection, or refused.
EMPTY_COMPLETION_RULES = ("keep", "drop", "error")
#: How annotated candidates become pairs (`AEPOConfig.pairing_rule`).
PAIRING_RULES = ("best_vs_worst", "all_pairs", "best_vs_random")
#: The reward-aware losses this package computes (entries of `loss_type`; TRL computes the rest).
RPO_LOSS_TYPES = ("rpo_sq", "rpo_bwd_kl", "rpo_fwd_kl")
#: What the labelling page (`aepo label --question`) asks people about the k candidates of a prompt.
LABEL_QUESTIONS = ("score", "ranking", "best_worst")
#: Roles of a labelling token file's third column: a reviewer labels too, and accepts or overrides finished items.
LABELLER_ROLES = ("labeller", "reviewer")

# --- Safer-Instruct data synthesis (`aepo_trainer.synthesis`, `aepo safer-instruct`)
#: The sub-steps of `aepo safer-instruct`, in pipeline order ("all" runs every one).
SYNTHESIS_STEPS = ("reverse-sft", "induce", "filter", "respond", "all")
#: The judge's rubrics (`aepo_trainer.synthesis.templates.JUDGE_TEMPLATES`).
JUDGE_RUBRICS = ("quality", "safety")
#: What happens to a text longer than the model's context: cut (and flagged) or dropped (and counted).
LONG_TEXT_POLICIES = ("truncate", "skip")
#: How a local model is run by the synthesis stages ("auto": vLLM when installed and a GPU is present).
GENERATOR_BACKENDS = ("auto", "transformers", "vllm")
#: `aepo generate --backend` and `aepo best-of-n --backend`: the local backends, or any OpenAI-compatible server
#: ("openai", docs/llm-services.md).
GENERATE_BACKENDS = (*GENERATOR_BACKENDS, "openai")
#: How on-policy generation reaches vLLM (`AEPOConfig.vllm_mode`; TRL GRPO's names).
VLLM_MODES = ("colocate", "server")
