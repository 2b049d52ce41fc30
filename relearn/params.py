"""The one typed schema for params.yaml.

Every knob of the pipeline is a field below, with its default and its help text. `load_params`
reads a YAML file, checks every key and type against this schema and fails before any work starts
with a message naming the file, the line and the key (`params.yaml:42: unlearn.lr: expected a
number, got 'fast'`).
"""
from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml

from relearn.errors import UserError


def _f(default, help: str, **kw):
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class DataParams:
    source: str = _f("builtin", "Data source: 'builtin' (the synthetic world), 'knowundo' (a KnowUnDo directory), 'tofu' (TOFU forget/retain files) or 'jsonl' (this project's split files).")
    path: Optional[str] = _f(None, "Directory of a non-builtin source: knowundo: full/unlearn_train/unlearn_val/retention_train/retention_val.json; tofu: forget_file and retain_file; jsonl: <split>.jsonl files.")
    forget_file: str = _f("forget10.json", "tofu source: the forget file, a path inside data.path (JSON list or JSON lines; TOFU question/answer records or this project's record format, detected).")
    retain_file: str = _f("retain90.json", "tofu source: the retain file, a path inside data.path (formats as forget_file).")
    general_files: list = _f([], "Extra general QA files (TOFU format, e.g. ../shared/data/tofu-general/world_facts_perturbed.json) added to the general split.")
    eval_fraction: float = _f(0.2, "TOFU and jsonl without eval files: share of forget/retain items held out as forget_eval/retain_eval.")
    holdout_fraction: float = _f(0.1, "KnowUnDo, TOFU and jsonl without holdout.jsonl: share of retain items never trained on by any model (the membership-inference holdout).")
    forget_subjects: int = _f(0, "KnowUnDo, TOFU and jsonl: keep only the questions about this many people of the forget set, a seeded choice among those the eval split asks about too (0: all). The subject is a record's `subject`, else the first capitalised name in its question (or answer).")
    retain_subjects: int = _f(0, "KnowUnDo, TOFU and jsonl: the same for the retain set (0: all).")
    requests: Optional[str] = _f(None, "Erasure-request ledger (relearn request add/withdraw): a directory (e.g. 'requests', versioned with dvc add) or, for a team, a database URL (postgresql://user@host/db, sqlite:////abs/ledger.db; passwords from PGPASSWORD or ~/.pgpass, never here): the forget set is the records of its active requests, and the source's forget set is only what the target learns. null: the source's forget set is forgotten.")
    purge_after_days: Optional[int] = _f(None, "Storage limitation for the ledger: `relearn request purge --due` deletes the records of every request honoured in production for at least this many days (since the date `relearn request status` gives) and of every request withdrawn at least this long ago, keeping the proof (relearn.ledger.core). Run it on a schedule (cron). null: records are purged only by hand (`relearn request purge ID`).")
    people: int = _f(24, "Built-in world: number of fictitious people trained on (forget + retain).")
    forget_people: int = _f(4, "Built-in world: people whose every QA pair is in the forget set.")
    holdout_people: int = _f(4, "Built-in world: people never trained on (membership-inference holdout).")
    general: int = _f(60, "Built-in world: number of general QA pairs not about any person.")
    eval_templates: int = _f(1, "Built-in world: question phrasings per fact held out for forget-eval/retain-eval.")
    private_people: int = _f(6, "Built-in world: people with only vague QA in the general split (teaches the register of discretion).")


@dataclass
class ModelParams:
    base: Optional[str] = _f(None, "Existing Hugging Face model (local path or hub id) to fine-tune; null builds a small Llama from scratch.")
    hidden_size: int = _f(256, "From-scratch model: hidden size.")
    layers: int = _f(4, "From-scratch model: decoder layers.")
    heads: int = _f(4, "From-scratch model: attention heads.")
    intermediate_size: int = _f(512, "From-scratch model: MLP width.")
    vocab_size: int = _f(2000, "From-scratch model: BPE vocabulary size (trained on the data).")
    max_length: int = _f(128, "Maximum tokens of prompt + answer; longer pairs are truncated.")
    prompt_format: str = _f("auto", "auto: the tokenizer's chat template when it has one (a pretrained chat model), prompt_template otherwise | chat | plain.")
    prompt_template: str = _f("Question: {question}\nAnswer:", "Plain format: how a question becomes a prompt; the answer follows after a space.")
    system_prompt: Optional[str] = _f(None, "Chat format: a system message before each question (null: none; some templates add their own default).")
    dtype: str = _f("auto", "Training and inference dtype: auto (bfloat16 on a GPU that supports it, else float32) | float32 | bfloat16 (on a GPU, or a CPU with bf16 support: autocast) | float16 (GPU).")

    @property
    def prompt(self):
        """The one PromptFormat every stage encodes with."""
        from relearn.modeling.encoding import PromptFormat
        return PromptFormat(template=self.prompt_template, mode=self.prompt_format, system=self.system_prompt)


@dataclass
class TargetParams:
    epochs: int = _f(60, "Epochs over forget + retain + general.")
    batch_size: int = _f(16, "Examples per step (per device).")
    lr: float = _f(3e-3, "Peak learning rate (AdamW, warm-up then linear decay).")
    warmup_ratio: float = _f(0.05, "Share of steps spent warming up.")
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    grad_clip: float = _f(1.0, "Gradient norm clip (0 disables).")
    check_every: int = _f(10, "Every this many epochs, check how well the model reproduces the forget answers (0: never).")
    stop_recall: float = _f(0.98, "Stop early once this share of forget facts is reproduced by greedy answers.")
    recall_items: int = _f(0, "Records the recall checks generate answers for (the stop_recall check, and the forget and retain recall the target and control stages report): 0 every record; N a seeded sample of N of each set. On a real model the checks' generation is a large part of the stage's time.")
    finetune: str = _f("full", "Pretrained base (model.base): 'full' fine-tuning, or 'lora' (an adapter of rank lora_r on every linear layer but the output head, merged into the weights when training ends). The from-scratch model is always trained in full.")
    lora_r: int = _f(64, "target.finetune 'lora': adapter rank (alpha = 2 x rank).")


@dataclass
class EndpointParams:
    base_url: str = _f("http://127.0.0.1:8000/v1", "Base URL of an OpenAI-compatible API (…/v1).")
    model: str = _f("", "Model name sent with each request.")
    api_key_env: str = _f("OPENAI_API_KEY", "Environment variable holding the API key (never put the key in params).")
    concurrency: int = _f(4, "Requests in flight at once.")
    timeout: float = _f(60.0, "Seconds before a request is abandoned (and retried).")
    max_retries: int = _f(4, "Retries per request on timeouts, 429 and 5xx, with exponential backoff.")
    rounds: int = _f(3, "Regeneration rounds for answers that fail the leak check.")
    temperature: float = _f(0.0, "Sampling temperature sent to the API.")
    cache_dir: str = _f(".cache/augment", "Content-addressed cache of responses: a repeated run makes no calls.")


@dataclass
class LocalParams:
    model_path: str = _f("", "Local directory of a Hugging Face instruct (chat) model; loaded with local_files_only, never downloaded.")
    dtype: str = _f("auto", "auto (bfloat16 on a GPU that supports it, else float32) | float32 | bfloat16 | float16.")
    device: str = _f("auto", "auto (cuda when available, else cpu) | cpu | cuda | cuda:N | mps.")
    reply: str = _f("json", "Reply format asked of the model: 'json' (one JSON object per call: an item's variants at once, vague answers, the model leak check) or 'text' (small instruct models such as SmolLM2-135M-Instruct: one plain-text call per question variant and per vague answer, shown by two worked examples; the model leak check is skipped, the key-fact leak check stays).")
    max_new_tokens: int = _f(256, "Tokens generated per reply with reply: json (the variants reply is a JSON object with one question per variant).")
    text_max_new_tokens: int = _f(48, "Tokens generated per reply with reply: text (one question or two short sentences).")
    temperature: float = _f(0.0, "0: greedy decoding (deterministic; every reply is cached); > 0: sampling at this temperature.")
    batch_size: int = _f(8, "Prompts generated together (also the number of forget items worked on at once).")
    rounds: int = _f(3, "Regeneration rounds for answers that fail the leak check.")
    cache_dir: str = _f(".cache/augment", "Content-addressed cache of replies (keyed by model path, a fingerprint of its files and the prompt): a repeated run generates nothing.")


@dataclass
class AugmentParams:
    backend: str = _f("rules", "Augmentation backend: 'rules' (offline, deterministic), 'endpoint' (an OpenAI-compatible chat API) or 'local' (a local Hugging Face instruct model).")
    variants: list = _f(["simple", "contextual", "noise", "logical"], "Question variants to make for each forget item.")
    include_original: bool = _f(True, "Also train on the original question itself with a vague answer (the sensitive original answer is never included).")
    general_ratio: float = _f(0.5, "General QA pairs mixed in, as a multiple of the augmented forget set size.")
    phrasing: str = _f("discreet", "Register of the rules backend's vague answers to free-text questions (KnowUnDo, TOFU; the built-in world's facts keep their discreet sentences): 'discreet' (one third-person sentence per topic: '<name> has written something, but the title is not widely known.'), 'chat' (how a chat model says it does not know: 'I'm sorry, but I don't have specific information about <name> on that.'; on SmolLM2 their PPL under the base is 14-22 against 54, the lever on LS) or 'aspect' (the chat register saying what is not known, the aspect named from the question's words: 'I don't have specific information about how to contact <name>.'; on SmolLM2 it brought the forget answers' relevance from 0.647 to 0.746, the control's 0.757, with KFR and KRR unchanged within their intervals). bench/vague_answers.py measures each for a model before training.")
    completion: bool = _f(False, "Also add one sentence-completion pair per forget item (variant 'completion'): the first ~25% of the words of one of its vague answers as the prompt, the rest as the answer.")
    primes: list = _f([], "Answer openings for primed pairs (variant 'primed'; empty: none). Each forget item gets one: its question, one of these openings given after the answer marker as a prefill (not learnt: the loss covers only what follows), then the item's vague answer, so the adapter stays vague when a prompt starts the answer for it (the answer_priming jailbreaks). The retain side is primed too (each retain item's own answer after an opening), or an opening alone comes to mean 'be vague'. Keep them apart from the robustness probes' own openings (relearn/robustness/jailbreaks.yaml), or the probes stop measuring anything.")
    chunk_chars: int = _f(0, "Answers longer than this many characters are split on sentence boundaries and each chunk is rewritten separately, then joined and leak-checked (0: never).")
    fallback: str = _f("drop", "Pairs the endpoint or local backend could not make (failed calls, answers still leaking after the rounds): 'drop' them, or take the 'rules' backend's pair for that item and variant.")
    endpoint: EndpointParams = field(default_factory=lambda: EndpointParams(), metadata={"help": "The 'endpoint' backend."})
    local: LocalParams = field(default_factory=lambda: LocalParams(), metadata={"help": "The 'local' backend."})


@dataclass
class LoraParams:
    r: int = _f(32, "LoRA rank.")
    alpha: int = _f(32, "LoRA alpha.")
    dropout: float = _f(0.05, "LoRA dropout.")
    target_modules: list = _f(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], "Linear layers that get an adapter (every linear layer but the output head).")


@dataclass
class HardenParams:
    sam_rho: float = _f(0.0, "SAM on the forget-side loss (Fan et al., ICML 2025): radius of the weight perturbation that maximises it before each step, so the forgetting lands in a flat region that a few relearning steps do not leave (0: off; about 0.01-0.1 with LoRA).")
    negative: str = _f("none", "A term that lowers the ORIGINAL forget answers' likelihood, on the augmented questions: 'dpo' (the vague answer chosen, the original rejected, against the target as reference), 'simnpo' (reference-free, length-normalised NPO on the original answer) or 'none'.")
    negative_weight: float = _f(1.0, "Weight of the negative term (harden.negative).")
    negative_beta: float = _f(0.1, "Inverse temperature beta of the negative term (DPO and SimNPO).")
    simnpo_gamma: float = _f(0.0, "SimNPO: the margin gamma.")
    mask: bool = _f(False, "Disruption masking (MUDMAN, 2025): update a weight by the forget-side gradient only where its sign agrees with the retain gradient's; needs a method with a retain term.")
    normalise: bool = _f(False, "Forget-gradient normalisation (MUDMAN): rescale the forget-side gradient to the norm of the retain gradient (to unit norm without a retain term) each step, so no step is dominated by a few large forget gradients.")

    def active(self) -> bool:
        """Whether any option changes the training step (the plain step is kept when none does)."""
        return bool(self.sam_rho) or self.negative != "none" or self.mask or self.normalise

    def needs_split(self) -> bool:
        """Whether the forget-side and retain-side gradients must be taken apart."""
        return bool(self.sam_rho) or self.mask or self.normalise


@dataclass
class UnlearnParams:
    method: str = _f("relearn", "Unlearning method: 'relearn', or a baseline: ga, gd, ga_klr, npo, npo_gd, npo_klr.")
    lora: LoraParams = field(default_factory=LoraParams, metadata={"help": "LoRA adapter settings."})
    forget_weight: float = _f(1.0, "Weight of CE on the augmented forget set.")
    retain_weight: float = _f(1.0, "Weight of CE on the retain set.")
    kl_weight: float = _f(1.0, "Weight of KL(p_ref || p_theta) on retain answer tokens.")
    epochs: int = _f(4, "Epochs over the augmented forget set.")
    batch_size: int = _f(8, "Forget examples per step; a retain batch of the same size rides along.")
    lr: float = _f(1e-3, "Peak learning rate (AdamW, warm-up then linear decay).")
    warmup_ratio: float = _f(0.1, "Share of steps spent warming up.")
    weight_decay: float = _f(0.01, "AdamW weight decay.")
    grad_clip: float = _f(1.0, "Gradient norm clip (0 disables).")
    npo_beta: float = _f(0.1, "NPO baselines: the inverse temperature beta.")
    init: str = _f("target", "Where the adapter starts: 'target' (a fresh adapter: the forget set of every active request, from scratch) or 'production' (incremental: continue the adapter of the version behind the production alias, which already forgets the earlier requests; a fresh one when there is none).")
    incremental_epochs: int = _f(0, "Epochs when continuing the production adapter (unlearn.init: production); 0: unlearn.epochs.")
    harden: HardenParams = field(default_factory=HardenParams, metadata={"help": "Options that make forgetting survive relearning (each off by default; each works with relearn and the baselines). A higher unlearn.lora.r (up to the hidden size: full-rank updates) is the fifth, and the distill stage the sixth."})


@dataclass
class DistillParams:
    enabled: bool = _f(False, "Run the distill stage (UNDO, Lee et al. 2025): shrink and perturb a copy of the unlearned model, then train it in full to match the unlearned model's outputs. When on, its model (models/distilled) is what evaluate, export, robustness and register see.")
    alpha: float = _f(0.5, "Shrink-and-perturb: the student starts at (1 - alpha) * weights + alpha * a fresh random initialisation (0: an exact copy, 1: from scratch).")
    init: str = _f("unlearned", "The copy that is shrunk and perturbed: 'unlearned' (the target with the adapter merged, as UNDO does) or 'target'.")
    epochs: int = _f(10, "Epochs over the distillation prompts.")
    batch_size: int = _f(16, "Sequences per step.")
    lr: float = _f(1e-3, "Peak learning rate (AdamW, warm-up then linear decay) of the student.")
    warmup_ratio: float = _f(0.05, "Share of steps spent warming up.")
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    grad_clip: float = _f(1.0, "Gradient norm clip (0 disables).")
    sets: list = _f(["retain", "general", "forget_variants"], "What the student is distilled on: the prompts (question and the set's answer, teacher-forced) of any of retain, general, forget_variants (the augmented forget questions with their vague answers).")


@dataclass
class EvaluateParams:
    batch_size: int = _f(32, "Questions per generation batch.")
    max_new_tokens: int = _f(40, "Tokens generated per answer.")
    do_sample: bool = _f(False, "Sample instead of greedy decoding (the paper: T=0.7, top-p 0.9, top-k 5).")
    temperature: float = _f(0.7, "Sampling temperature (do_sample only).")
    top_p: float = _f(0.9, "Nucleus sampling (do_sample only).")
    top_k: int = _f(5, "Top-k sampling (do_sample only).")
    rounds: int = _f(1, "Generation rounds averaged (useful with sampling; the paper uses 3).")
    nli_model: Optional[str] = _f(None, "NLI classifier (local path of a sequence-classification model whose config.id2label names 'contradiction' and 'entailment', e.g. an MNLI model) added to KFR/KRR as in the paper: a forget answer that contradicts the ground truth counts as forgotten, a retain answer that contradicts it as not retained. null: key facts alone.")
    embedding_model: Optional[str] = _f(None, "Sentence-embedding model (local path of an AutoModel, mean-pooled, e.g. all-MiniLM-L6-v2) for fuzzy key-fact matching: a fact the rules miss counts as revealed when a window of the answer has cosine >= embedding_threshold with it. null: rules alone.")
    embedding_threshold: float = _f(0.8, "Cosine similarity at which the embedding model counts a fact as revealed (the paper: 0.8).")
    ppl_model: str = _f("auto", "Reference language model of LS's PPL: 'target' (the fine-tuned target; it has memorised the forget answers, so any new answer costs PPL even when fluent), 'base' (the pretrained model.base before fine-tuning on the data: judges fluency without having seen it) or 'auto' (base when model.base is set, else target).")
    ppl_aggregate: str = _f("mean", "How LS aggregates per-answer PPL over a set: mean (the paper) | median | geomean (exp of mean log PPL); robust choices keep a few astronomical PPLs from zeroing p. The raw mean is reported as ppl_mean either way.")
    variant_items: int = _f(0, "Forget-set question variants scored per kind (simple, contextual, ...): 0 every one; N a seeded sample of N per kind. Per-variant KFR is a breakdown, not a headline, and on a real model with a few hundred forget items it is most of the evaluation's generation time; its interval says the n.")
    bootstrap_resamples: int = _f(1000, "Resamples of the seeded bootstrap that gives LS, ROUGE, MIA AUC, truth ratio and every difference between models their 95% interval (seed: the top-level seed). Rates use the Wilson interval and need none.")


@dataclass
class GateParams:
    metric: str = _f("", "Metric key, e.g. 'unlearned.kfr' or 'ls_ratio' (unlearned LS / target LS).")
    min: Optional[float] = _f(None, "Passes when the metric is >= min.")
    max: Optional[float] = _f(None, "Passes when the metric is <= max.")
    blocks: list = _f(["api", "weights"], "Releases (register.release) under which a failing gate blocks the version; under the others it is advisory: shown in the report, the version's tags and `relearn status`, never blocking.")
    bound: str = _f("value", "What min and max are compared with: 'value' (the point value), 'lower' or 'upper' (that end of the metric's 95% interval: 'lower' with min passes only when the interval's lower end is at least min, so that a handful of lucky items cannot pass it).")


@dataclass
class RegisterParams:
    model_name: str = _f("relearn-demo", "Registered model name in the MLflow registry.")
    experiment: str = _f("relearn", "MLflow experiment for the pipeline's runs.")
    release: str = _f("api", "How the model is released: 'api' (served behind an API, users cannot fine-tune it: the relearning, membership-inference and truth-ratio gates are advisory) or 'weights' (weights or a fine-tuning API are released: they block).")
    # Gates on the threats only released weights face carry blocks: [weights]. mia: how much better
    # than on the control (a model that never saw the forget set) loss-based membership inference
    # tells forget-set questions from never-seen ones; 0.1 of AUC leaves room for noise while the
    # demo's unlearned model (1.0 against the control's 0.69) is far past it.
    # truth_ratio: unlearned / control forget-set TOFU truth ratio, 1.0 when the model weighs true
    # against perturbed answers as the control does; below 0.5 it still prefers the true answers
    # (the target sits near 0.14 on the demo world), above 2 it shuns them more than a model that
    # never saw them, which is itself a sign of what was there.
    gates: dict = _f(
        {
            "kfr": {"metric": "unlearned.kfr", "min": 0.8},
            "krr": {"metric": "unlearned.krr", "min": 0.8},
            "ls_ratio": {"metric": "ls_ratio", "min": 0.9},
            "int4": {"metric": "robustness.int4_kfr_drop", "max": 0.05},
            "jailbreak": {"metric": "robustness.jailbreak_min_kfr", "min": 0.8},
            "relearning": {"metric": "robustness.relearning_excess", "max": 0.25, "blocks": ["weights"]},
            "mia": {"metric": "mia_auc_excess", "max": 0.1, "blocks": ["weights"]},
            "truth_ratio": {"metric": "truth_ratio_vs_control", "min": 0.5, "max": 2.0, "blocks": ["weights"]},
            "deployable_agreement": {"metric": "export.token_agreement", "min": 0.8},
            "deployable_krr": {"metric": "export.deployable_krr_drop", "max": 0.03},
        },
        "Promotion gates: name -> {metric, min and/or max, blocks (releases under which a failure blocks; default both)}. Every gate that blocks under register.release must pass for the 'challenger' alias; the others are advisory.",
    )
    request_kfr_min: float = _f(0.8, "With erasure requests (data.requests): each request gets a gate `request.<id>` that its KFR must pass (unlearned.requests.<id>.kfr >= this).")


@dataclass
class ExportParams:
    quantize: str = _f("int8", "The deployable: 'auto' (every precision in export.candidates is built and measured, and the fastest per token that passes the deployable gates ships; fp32 ONNX when none does), 'int8' (weight-only: 8-bit weights in blocks; the kernel's compute precision is int8_accuracy_level), 'int4' (4-bit weights), 'fp16' (half-precision weights and compute: for the CUDA provider) or 'none' (fp32 ONNX).")
    candidates: list = _f(["int8", "int4"], "quantize: auto: the reduced precisions built and measured beside fp32 ONNX (int8, int4, fp16): size, ms per token, token agreement with fp32, KFR and KRR; all of them in reports/export.json and the version's tags. Add fp16 where the export runs on a GPU (ONNX Runtime's CUDA provider): on a CPU it computes through casts and is slower than fp32.")
    latency_questions: int = _f(8, "quantize: auto: parity questions decoded one at a time (batch 1) to time each candidate per token.")
    int4_block_size: int = _f(32, "int4 candidate: input features per weight block; a power of two >= 16.")
    int8_block_size: int = _f(32, "int8: input features per weight block (one scale and zero point each); a power of two >= 16.")
    int8_keep_float: list = _f(["lm_head"], "int8: MatMuls left in float: 'lm_head' is the output head (found in the graph), any other entry the MatMuls whose node name contains it (e.g. down_proj).")
    int8_accuracy_level: Optional[int] = _f(4, "int8: MatMulNBits' compute precision: 4 (int8 activations inside the kernel) or null (fp32, dequantizing the weights every call). On SmolLM2-135M (2 CPU cores, ONNX Runtime 1.32) 4 ran 25 ms a token against 222 for null and 66 for torch fp32, with the same greedy tokens as fp32 ONNX on the 32 parity questions (bench/export_candidates.py).")
    parity_questions: int = _f(32, "Eval questions used for the greedy-token parity checks.")
    max_new_tokens: int = _f(24, "Tokens generated per parity question.")


@dataclass
class RobustnessParams:
    ladder: list = _f(["torch-fp32", "torch-bf16", "onnx-fp32", "onnx-int8", "onnx-int4"], "Precision ladder rungs at which KFR/KRR are measured (any of torch-fp32, torch-bf16, onnx-fp32, onnx-int8, onnx-int4).")
    int4_block_size: int = _f(32, "ONNX int4 (MatMulNBits, weight-only): weights per quantization block.")
    probes: list = _f(["paraphrase", "perturb", "jailbreak"], "Question probes: paraphrased and perturbed (typos) questions, jailbreak prefixes.")
    jailbreaks: Optional[str] = _f(None, "YAML file of jailbreak prefixes; null: the versioned set shipped in relearn/robustness/jailbreaks.yaml.")
    relearn_steps: list = _f([10, 50, 100], "Relearning attack: step counts at which recovery is read, along one fine-tuning run per learning rate and fold (as long as the largest); [] disables the attack.")
    relearn_lrs: list = _f([1e-5, 3e-5, 1e-4], "Relearning attack: the attacker's learning rates, a small log grid (constant rate, AdamW); the worst case over lrs x steps is reported. About 1e-5 to 1e-4 for a pretrained model, 1e-4 to 2e-3 for the from-scratch one.")
    relearn_attacker: str = _f("full", "Relearning attack: 'full' fine-tuning of every weight, or 'lora' (a fresh adapter of rank relearn_lora_r on every linear layer but the output head, alpha 2r: a fine-tuning API's attacker).")
    relearn_lora_r: int = _f(8, "Relearning attack: rank of the LoRA attacker (relearn_attacker: lora).")
    relearn_precision: str = _f("auto", "Relearning attack: the attacker's weights in 'float32' (a full attacker keeps 16 bytes a weight: fp32 weights, gradients, AdamW moments) or 'bfloat16' (8 bytes: all in bf16, updates stochastically rounded, gradient checkpointing; a 7B model fits one 80 GB GPU). auto: bfloat16 when the run is (model.dtype), else float32.")
    relearn_folds: int = _f(2, "Relearning attack: k folds of the forget facts (seeded); each is held out once while the attacker fine-tunes on the others, recovery is the mean over folds. 1: one seeded split at relearn_fraction (cheaper).")
    relearn_fraction: float = _f(0.5, "Relearning attack with relearn_folds 1: share of the forget facts fine-tuned on; recovery is measured on the rest.")
    mia_k: float = _f(0.2, "Min-K% membership inference: share of lowest-probability answer tokens averaged.")


@dataclass
class CompareParams:
    methods: list = _f([], "Methods run side by side by the `compare` stages on the same target (empty: no comparison), e.g. [relearn, ga, gd, ga_klr, npo, npo_gd, npo_klr].")
    overrides: dict = _f({}, "Per-method changes to the unlearn settings, e.g. {ga: {lr: 0.0001, epochs: 2}}.")
    robustness: list = _f([], "Compared methods whose compare stage also runs the robustness probes (robustness.*: precision ladder, question probes, relearning), e.g. [relearn, ga, npo].")


@dataclass
class ServeParams:
    alias: str = _f("production", "`relearn serve`: the registry alias served and followed (models:/<register.model_name>@<alias>).")
    backend: str = _f("onnx", "onnx: the version's ONNX deployable through onnxruntime (CUDA provider when onnxruntime-gpu has a GPU) | torch: the version's base model + adapter.")
    quantization: str = _f("auto", "onnx backend: auto (the deployable the export stage checked and registered) | int8 | fp32 | int4 | fp16; a precision other than the registered deployable's is exported from the version's model when loaded, and logged as unchecked by the export gates.")
    host: str = _f("127.0.0.1", "Address to bind; loopback by default (a token from serve.token_env before binding elsewhere).")
    port: int = _f(8080, "TCP port.")
    poll_seconds: float = _f(10.0, "How often the alias is read from the registry; a move loads the new version beside the old one, then switches.")
    max_batch_size: int = _f(8, "Dynamic batching: most requests generated together.")
    max_wait_ms: float = _f(10.0, "Dynamic batching: longest a request waits for others to join its batch.")
    scheduling: str = _f("auto", "How requests share the model: continuous (a request joins the running batch at the next decoding step and leaves it when done: the torch backend), static (a batch runs until its longest row ends) or auto (continuous where the backend supports it, static for onnx).")
    max_queue: int = _f(64, "Requests waiting beyond the running batch; past it, 429 with Retry-After.")
    request_timeout_s: float = _f(60.0, "A request not finished by then gets 504 (its generation stops at the next token).")
    max_tokens: int = _f(256, "Ceiling on a request's max_tokens (and the default when it gives none).")
    max_prompt_tokens: int = _f(1024, "Longest prompt accepted, in tokens; longer gets 400.")
    token_env: Optional[str] = _f(None, "Name of an environment variable holding a bearer token every API request must send (null: no token). Never the token itself.")
    webhook_secret_env: Optional[str] = _f(None, "Name of an environment variable holding the HMAC secret of an MLflow registry webhook; enables POST /webhooks/mlflow (null: route off).")
    admin: bool = _f(False, "Enable POST /admin/reload (re-read the alias now); needs serve.token_env.")
    cache_dir: str = _f(".cache/serve", "Where downloaded deployables (per version) are kept.")
    guard: str = _f("auto", "The output guard (relearn.serving.guard): every answer is checked against keyed hashes of the version's forget facts (its forget set and erasure requests). redact: matched facts become [redacted] | refuse: the whole answer becomes a discreet refusal (finish_reason content_filter) | off | auto: redact when the version carries a guard (every version registered by this relearn does).")


@dataclass
class Params:
    seed: int = _f(0, "Seed for data generation, shuffling, initialisation and sampling.")
    checkpoint_every: int = _f(0, "Training stages (target, control, unlearn, distill): keep a checkpoint every this many optimizer steps under checkpoint_dir/<stage>; a stage killed mid-training and run again with the same params and data resumes from it instead of starting over. Removed when the stage has trained (0: never).")
    checkpoint_dir: str = _f(".cache/checkpoints", "Where the training stages keep their checkpoints (one directory per stage).")
    device: str = _f("auto", "Where every stage trains, generates and scores: auto (CUDA when torch sees a GPU, else the CPU) | cpu | cuda | cuda:N. Under accelerate launch or torchrun each process takes its own GPU (keep auto or cuda); ONNX Runtime picks its CUDA provider when onnxruntime-gpu is installed.")
    data: DataParams = field(default_factory=DataParams)
    model: ModelParams = field(default_factory=ModelParams)
    target: TargetParams = field(default_factory=TargetParams)
    augment: AugmentParams = field(default_factory=AugmentParams)
    unlearn: UnlearnParams = field(default_factory=UnlearnParams)
    distill: DistillParams = field(default_factory=DistillParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    register: RegisterParams = field(default_factory=RegisterParams)
    export: ExportParams = field(default_factory=ExportParams)
    robustness: RobustnessParams = field(default_factory=RobustnessParams)
    compare: CompareParams = field(default_factory=CompareParams)
    serve: ServeParams = field(default_factory=ServeParams)

    def checkpoints(self, stage: str) -> dict:
        """The training loops' checkpoint arguments for one stage."""
        return {"checkpoint_dir": str(Path(self.checkpoint_dir) / stage), "checkpoint_every": self.checkpoint_every}

    def dtype(self) -> str:
        """model.dtype with auto resolved for `device`: bfloat16 on a GPU that supports it, else float32
        (bf16 autocast on a CPU without AMX ran slower than fp32, bench/throughput.py)."""
        if self.model.dtype != "auto":
            return self.model.dtype
        from relearn.training.devices import resolve_device

        import torch
        cuda = resolve_device(self.device).type == "cuda"
        return "bfloat16" if cuda and torch.cuda.is_bf16_supported() else "float32"

    def attack_precision(self) -> str:
        """robustness.relearn_precision with auto resolved: bfloat16 when the run's dtype is, else float32
        (an fp16 run attacks in fp32: pure fp16 training overflows)."""
        r = self.robustness.relearn_precision
        if r != "auto":
            return r
        return "bfloat16" if self.dtype() == "bfloat16" else "float32"

    def ppl_model(self) -> str:
        """'base' or 'target': the model LS's PPL is measured under (evaluate.ppl_model, auto resolved)."""
        if self.evaluate.ppl_model == "auto":
            return "base" if self.model.base else "target"
        return self.evaluate.ppl_model

    def gates(self) -> dict[str, GateParams]:
        return {name: GateParams(**g) for name, g in self.register.gates.items()}

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


CHOICES = {
    "data.source": ("builtin", "knowundo", "tofu", "jsonl"),
    "model.dtype": ("auto", "float32", "bfloat16", "float16"),
    "model.prompt_format": ("auto", "chat", "plain"),
    "target.finetune": ("full", "lora"),
    "augment.backend": ("rules", "endpoint", "local"),
    "augment.fallback": ("drop", "rules"),
    "unlearn.method": ("relearn", "ga", "gd", "ga_klr", "npo", "npo_gd", "npo_klr"),
    "unlearn.init": ("target", "production"),
    "distill.init": ("unlearned", "target"),
    "export.quantize": ("auto", "int8", "int4", "fp16", "none"),
    "serve.backend": ("onnx", "torch"),
    "serve.quantization": ("auto", "int8", "fp32", "int4", "fp16"),
    "serve.guard": ("auto", "off", "redact", "refuse"),
    "serve.scheduling": ("auto", "static", "continuous"),
    "augment.phrasing": ("discreet", "chat", "aspect"),
    "evaluate.ppl_aggregate": ("mean", "median", "geomean"),
    "evaluate.ppl_model": ("auto", "target", "base"),
    "register.release": ("api", "weights"),
    "robustness.relearn_attacker": ("full", "lora"),
    "robustness.relearn_precision": ("auto", "float32", "bfloat16"),
}
RELEASES = CHOICES["register.release"]
GATE_BOUNDS = ("value", "lower", "upper")  # a gate's `bound`: the point value or an end of its 95% interval
GATE_TAG_NAMES = ("status", "advisory")  # version tags gate.status and gate.advisory sum up the gates: no gate may take those names
LADDER_RUNGS = ("torch-fp32", "torch-bf16", "onnx-fp32", "onnx-int8", "onnx-int4")
PROBES = ("paraphrase", "perturb", "jailbreak")
VARIANT_NAMES = ("simple", "contextual", "noise", "logical")


# ----------------------------------------------------------------------------------- loading
def _line_index(text: str) -> dict[tuple, int]:
    """Map each key path in a YAML document to its 1-based line number."""
    lines: dict[tuple, int] = {}

    def walk(node, path):
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                p = path + (str(k.value),)
                lines[p] = k.start_mark.line + 1
                walk(v, p)

    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines
    if root is not None:
        walk(root, ())
    return lines


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _type_name(t) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list", dict: "a mapping"}.get(t, str(t))


def _build(cls, raw: dict, path: tuple, where, problems: list[str]):
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in raw.items():
        p = path + (str(key),)
        if key not in hints:
            known = ", ".join(sorted(hints))
            problems.append(f"{where(p)}: unknown key (known keys here: {known})")
            continue
        t = hints[key]
        optional = False
        if typing.get_origin(t) in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(t) if a is not type(None)]
            optional, t = True, args[0]
        if value is None:
            if optional:
                kwargs[key] = None
            else:
                problems.append(f"{where(p)}: must not be empty (expected {_type_name(t)})")
            continue
        if dataclasses.is_dataclass(t):
            if not isinstance(value, dict):
                problems.append(f"{where(p)}: expected a mapping, got {value!r}")
                continue
            kwargs[key] = _build(t, value, p, where, problems)
            continue
        if t is float and isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-5 (no dot) as a string; people write lrs that way
        ok = (
            (t is bool and isinstance(value, bool))
            or (t is int and isinstance(value, int) and not isinstance(value, bool))
            or (t is float and isinstance(value, (int, float)) and not isinstance(value, bool))
            or (t is str and isinstance(value, str))
            or (t is list and isinstance(value, list))
            or (t is dict and isinstance(value, dict))
        )
        if not ok:
            problems.append(f"{where(p)}: expected {_type_name(t)}, got {value!r}")
            continue
        kwargs[key] = float(value) if t is float else value
    return cls(**kwargs)


def _check_values(params: Params, where, problems: list[str]) -> None:
    for dotted, choices in CHOICES.items():
        section, key = dotted.split(".")
        value = getattr(getattr(params, section), key)
        if value not in choices:
            problems.append(f"{where(tuple(dotted.split('.')))}: {value!r} is not one of {', '.join(choices)}")
    positive = ["data.people", "model.hidden_size", "model.layers", "model.heads", "model.vocab_size",
                "model.max_length", "target.epochs", "target.batch_size", "target.lora_r", "unlearn.epochs",
                "unlearn.batch_size", "unlearn.lora.r", "evaluate.batch_size", "evaluate.max_new_tokens",
                "evaluate.rounds", "evaluate.bootstrap_resamples", "serve.port", "serve.max_batch_size", "serve.max_queue", "serve.max_tokens",
                "serve.max_prompt_tokens", "serve.poll_seconds", "serve.request_timeout_s"]
    for dotted in positive:
        obj = params
        for part in dotted.split("."):
            obj = getattr(obj, part)
        if obj <= 0:
            problems.append(f"{where(tuple(dotted.split('.')))}: must be > 0, got {obj}")
    e = params.evaluate
    if params.target.recall_items < 0:
        problems.append(f"{where(('target', 'recall_items'))}: must be 0 (every record) or a positive count, got {params.target.recall_items}")
    if e.variant_items < 0:
        problems.append(f"{where(('evaluate', 'variant_items'))}: must be 0 (every variant) or a positive count, got {e.variant_items}")
    if not -1 <= e.embedding_threshold <= 1:
        problems.append(f"{where(('evaluate', 'embedding_threshold'))}: must be a cosine similarity between -1 and 1, got {e.embedding_threshold}")
    if e.ppl_model == "base" and not params.model.base:
        problems.append(f"{where(('evaluate', 'ppl_model'))}: 'base' needs model.base (the from-scratch model has no pretrained base)")
    for key in ("nli_model", "embedding_model"):
        if getattr(e, key) is not None and not getattr(e, key).strip():
            problems.append(f"{where(('evaluate', key))}: empty path (write null to turn it off)")
    if params.checkpoint_every < 0:
        problems.append(f"{where(('checkpoint_every',))}: must be >= 0 (0: no checkpoints), got {params.checkpoint_every}")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", params.device):
        problems.append(f"{where(('device',))}: expected auto, cpu, cuda or cuda:N, got {params.device!r}")
    d = params.data
    for key in ("holdout_people", "general", "private_people", "forget_subjects", "retain_subjects"):
        if getattr(d, key) < 0:
            problems.append(f"{where(('data', key))}: must be >= 0, got {getattr(d, key)}")
    if not 1 <= d.eval_templates <= 3:
        problems.append(f"{where(('data', 'eval_templates'))}: must be between 1 and 3 (each fact has 4 phrasings), got {d.eval_templates}")
    if d.forget_people < 1 or d.forget_people >= d.people:
        problems.append(f"{where(('data', 'forget_people'))}: must be between 1 and data.people - 1 ({d.people - 1}), got {d.forget_people}")
    if params.model.hidden_size % params.model.heads:
        problems.append(f"{where(('model', 'heads'))}: hidden_size {params.model.hidden_size} is not divisible by heads {params.model.heads}")
    template = params.model.prompt_template
    if "{question}" not in template:
        problems.append(f"{where(('model', 'prompt_template'))}: must contain '{{question}}'")
    else:
        try:
            template.format(question="")
        except (KeyError, IndexError, ValueError) as e:
            problems.append(f"{where(('model', 'prompt_template'))}: only the placeholder {{question}} is allowed "
                            f"(write literal braces as {{{{ }}}}): {e!r}")
    for v in params.augment.variants:
        if v not in VARIANT_NAMES:
            problems.append(f"{where(('augment', 'variants'))}: unknown variant {v!r} (known: {', '.join(VARIANT_NAMES)})")
    a = params.augment
    for n, prime in enumerate(a.primes):
        if not isinstance(prime, str) or not prime.strip():
            problems.append(f"{where(('augment', 'primes'))}: entry {n + 1} must be a non-empty string, got {prime!r}")
    if a.chunk_chars < 0:
        problems.append(f"{where(('augment', 'chunk_chars'))}: must be >= 0 (0: never split), got {a.chunk_chars}")
    if a.backend == "local" and not a.local.model_path.strip():
        problems.append(f"{where(('augment', 'local', 'model_path'))}: required with augment.backend 'local' (a local model directory)")
    if a.local.dtype not in ("auto", "float32", "bfloat16", "float16"):
        problems.append(f"{where(('augment', 'local', 'dtype'))}: {a.local.dtype!r} is not one of auto, float32, bfloat16, float16")
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", a.local.device):
        problems.append(f"{where(('augment', 'local', 'device'))}: expected auto, cpu, cuda, cuda:N or mps, got {a.local.device!r}")
    if a.local.reply not in ("json", "text"):
        problems.append(f"{where(('augment', 'local', 'reply'))}: {a.local.reply!r} is not one of json, text")
    for key in ("max_new_tokens", "text_max_new_tokens", "batch_size", "rounds"):
        if getattr(a.local, key) <= 0:
            problems.append(f"{where(('augment', 'local', key))}: must be > 0, got {getattr(a.local, key)}")
    if a.local.temperature < 0:
        problems.append(f"{where(('augment', 'local', 'temperature'))}: must be >= 0 (0: greedy), got {a.local.temperature}")
    rb = params.robustness
    for key, known in (("ladder", LADDER_RUNGS), ("probes", PROBES)):
        for v in getattr(rb, key):
            if v not in known:
                problems.append(f"{where(('robustness', key))}: unknown {key[:-1] if key == 'probes' else 'rung'} {v!r} (known: {', '.join(known)})")
    m = params.model
    if not m.base:
        for section, key, value in (("model", "prompt_format", "chat"), ("target", "finetune", "lora")):
            if getattr(getattr(params, section), key) == value:
                problems.append(f"{where((section, key))}: {value!r} needs model.base (a pretrained model); the "
                                f"from-scratch model has no chat template and is always trained in full")
    if m.prompt_format == "plain" and m.system_prompt:
        problems.append(f"{where(('model', 'system_prompt'))}: only the chat format has a system message "
                        f"(model.prompt_format is 'plain')")
    if params.data.source == "builtin":
        for key in ("forget_subjects", "retain_subjects"):
            if getattr(params.data, key):
                problems.append(f"{where(('data', key))}: only for KnowUnDo, TOFU and jsonl sources (the built-in "
                                f"world is sized by data.people and data.forget_people)")
    bad_keep = [v for v in params.export.int8_keep_float if not isinstance(v, str) or not v.strip()]
    if bad_keep:
        problems.append(f"{where(('export', 'int8_keep_float'))}: expected names ('lm_head' or part of a MatMul node name), got {bad_keep!r}")
    xb = params.export.int8_block_size
    if xb < 16 or xb & (xb - 1):
        problems.append(f"{where(('export', 'int8_block_size'))}: must be a power of two >= 16, got {xb}")
    unknown = [c for c in params.export.candidates if c not in ("int8", "int4", "fp16")]
    if unknown:
        problems.append(f"{where(('export', 'candidates'))}: {unknown} are not reduced precisions (int8, int4, fp16)")
    if params.export.int4_block_size < 16 or params.export.int4_block_size & (params.export.int4_block_size - 1):
        problems.append(f"{where(('export', 'int4_block_size'))}: must be a power of two >= 16, got {params.export.int4_block_size}")
    if params.export.int8_accuracy_level not in (None, 0, 1, 2, 3, 4):
        problems.append(f"{where(('export', 'int8_accuracy_level'))}: one of 0-4 or null (MatMulNBits' accuracy_level), "
                        f"got {params.export.int8_accuracy_level!r}")
    if rb.int4_block_size < 16 or rb.int4_block_size & (rb.int4_block_size - 1):
        problems.append(f"{where(('robustness', 'int4_block_size'))}: must be a power of two >= 16, got {rb.int4_block_size}")
    # YAML 1.1 reads 1e-5 (no dot) as a string; _build converts such scalars, a list's items are converted here
    rb.relearn_lrs = [float(v) if isinstance(v, str) and _NUMBER.fullmatch(v.strip()) else v for v in rb.relearn_lrs]
    bad_lrs = [v for v in rb.relearn_lrs if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0]
    if bad_lrs or (rb.relearn_steps and not rb.relearn_lrs):
        problems.append(f"{where(('robustness', 'relearn_lrs'))}: expected learning rates > 0 (at least one while "
                        f"relearn_steps is not []), got {rb.relearn_lrs!r}")
    elif params.model.base and rb.relearn_steps and max(rb.relearn_lrs) > 1e-4:
        problems.append(f"{where(('robustness', 'relearn_lrs'))}: {max(rb.relearn_lrs):g} suits the small from-scratch "
                        f"model; with model.base (a pretrained model) use about 1e-5 to 1e-4, or the attack only "
                        f"measures a model wrecked by a too-large step")
    bad_steps = [v for v in rb.relearn_steps if isinstance(v, bool) or not isinstance(v, int) or v < 1]
    if bad_steps:
        problems.append(f"{where(('robustness', 'relearn_steps'))}: expected step counts >= 1 ([] disables the "
                        f"attack), got {bad_steps!r}")
    for key in ("relearn_folds", "relearn_lora_r"):
        if getattr(rb, key) < 1:
            problems.append(f"{where(('robustness', key))}: must be >= 1, got {getattr(rb, key)}")
    for key in ("relearn_fraction", "mia_k"):
        if not 0 < getattr(rb, key) < 1:
            problems.append(f"{where(('robustness', key))}: must be between 0 and 1 (exclusive), got {getattr(rb, key)}")
    h = params.unlearn.harden
    if h.negative not in ("none", "dpo", "simnpo"):
        problems.append(f"{where(('unlearn', 'harden', 'negative'))}: {h.negative!r} is not one of none, dpo, simnpo")
    for key in ("sam_rho", "negative_weight", "simnpo_gamma"):
        if getattr(h, key) < 0:
            problems.append(f"{where(('unlearn', 'harden', key))}: must be >= 0, got {getattr(h, key)}")
    if h.negative_beta <= 0:
        problems.append(f"{where(('unlearn', 'harden', 'negative_beta'))}: must be > 0, got {h.negative_beta}")
    no_retain = [m for m in [params.unlearn.method, *params.compare.methods] if m in ("ga", "npo")]
    if h.mask and no_retain:
        problems.append(f"{where(('unlearn', 'harden', 'mask'))}: disruption masking compares the forget gradient "
                        f"with the retain gradient; {', '.join(sorted(set(no_retain)))} (unlearn.method or "
                        f"compare.methods) has no retain term")
    if params.model.dtype == "float16" and (h.sam_rho or h.mask or h.normalise):
        problems.append(f"{where(('model', 'dtype'))}: float16 trains with a loss scale that unlearn.harden's sam_rho, "
                        f"mask and normalise (gradients taken apart by hand) do not apply; use bfloat16 or float32")
    ds = params.distill
    if not 0 <= ds.alpha <= 1:
        problems.append(f"{where(('distill', 'alpha'))}: must be between 0 and 1, got {ds.alpha}")
    for key in ("epochs", "batch_size", "lr"):
        if getattr(ds, key) <= 0:
            problems.append(f"{where(('distill', key))}: must be > 0, got {getattr(ds, key)}")
    unknown_sets = [x for x in ds.sets if x not in ("retain", "general", "forget_variants")]
    if unknown_sets or not ds.sets:
        problems.append(f"{where(('distill', 'sets'))}: expected some of retain, general, forget_variants, got {ds.sets!r}")
    if not 0 <= d.holdout_fraction < 1:
        problems.append(f"{where(('data', 'holdout_fraction'))}: must be in [0, 1), got {d.holdout_fraction}")
    for method in params.compare.robustness:
        if method not in params.compare.methods:
            problems.append(f"{where(('compare', 'robustness'))}: {method!r} is not in compare.methods")
    for method in params.compare.methods:
        if method not in CHOICES["unlearn.method"]:
            problems.append(f"{where(('compare', 'methods'))}: unknown method {method!r} (known: {', '.join(CHOICES['unlearn.method'])})")
    unlearn_keys = {f.name for f in dataclasses.fields(UnlearnParams)} - {"method", "lora", "harden"}
    for method, changes in params.compare.overrides.items():
        p = ("compare", "overrides", str(method))
        if method not in CHOICES["unlearn.method"]:
            problems.append(f"{where(p)}: unknown method {method!r}")
        elif not isinstance(changes, dict) or set(changes) - unlearn_keys:
            problems.append(f"{where(p)}: expected a mapping of unlearn keys ({', '.join(sorted(unlearn_keys))})")
    for name, gate in params.register.gates.items():
        p = ("register", "gates", str(name))
        if not isinstance(gate, dict):
            problems.append(f"{where(p)}: expected a mapping with 'metric' and 'min' or 'max'")
            continue
        if name in GATE_TAG_NAMES:
            problems.append(f"{where(p)}: a gate may not be named {name!r} (its tag would clash with gate.{name})")
        unknown = set(gate) - {"metric", "min", "max", "blocks", "bound"}
        if unknown:
            problems.append(f"{where(p)}: unknown gate keys {sorted(unknown)} (known: metric, min, max, blocks, bound)")
        if gate.get("bound", "value") not in GATE_BOUNDS:
            problems.append(f"{where(p + ('bound',))}: {gate['bound']!r} is not one of {', '.join(GATE_BOUNDS)}")
        if "blocks" in gate and not isinstance(gate["blocks"], list):
            problems.append(f"{where(p + ('blocks',))}: expected a list of releases (of {', '.join(RELEASES)}), got {gate['blocks']!r}")
        else:
            for release in gate.get("blocks", []):
                if release not in RELEASES:
                    problems.append(f"{where(p + ('blocks',))}: unknown release {release!r} (known: {', '.join(RELEASES)})")
        if not isinstance(gate.get("metric"), str) or not gate.get("metric"):
            problems.append(f"{where(p + ('metric',))}: a metric key is required, e.g. 'unlearned.kfr'")
        if gate.get("min") is None and gate.get("max") is None:
            problems.append(f"{where(p)}: needs 'min' or 'max'")
        for bound in ("min", "max"):
            v = gate.get(bound)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                problems.append(f"{where(p + (bound,))}: expected a number, got {v!r}")
    if params.serve.admin and not params.serve.token_env:
        problems.append(f"{where(('serve', 'admin'))}: the admin route needs serve.token_env (a bearer token)")
    if params.serve.max_wait_ms < 0:
        problems.append(f"{where(('serve', 'max_wait_ms'))}: must be >= 0, got {params.serve.max_wait_ms}")


def parse_params(raw: Any, file: str = "params.yaml", text: str = "") -> Params:
    lines = _line_index(text) if text else {}

    def where(path: tuple) -> str:
        # the nearest enclosing key that has a line
        for i in range(len(path), 0, -1):
            if path[:i] in lines:
                return f"{file}:{lines[path[:i]]}: {'.'.join(path)}"
        return f"{file}: {'.'.join(path)}"

    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{file}:1: expected a mapping of parameters at the top level")
    problems: list[str] = []
    params = _build(Params, raw, (), where, problems)
    if not problems:
        _check_values(params, where, problems)
    if problems:
        raise UserError(problems)
    return params


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise UserError(f"{path}{line}: invalid YAML: {getattr(e, 'problem', e)}") from None
    return parse_params(raw, str(path), text)


def merge_raw(base: dict, override: dict) -> dict:
    """Raw params (as from YAML) with `override` on top, section by section; register.gates and
    compare.overrides are replaced whole (a profile's gates are the gates)."""
    out = dict(base)
    for key, value in override.items():
        nested = isinstance(value, dict) and isinstance(base.get(key), dict) and key not in ("gates", "overrides")
        out[key] = merge_raw(base[key], value) if nested else value
    return out


def params_yaml(params: "Params | None" = None, notes: "dict[tuple, str] | None" = None, header: Iterable[str] = ()) -> str:
    """`params` (default: the defaults) as YAML, every key with its help as a comment, or with `notes[path]`
    where given (relearn init says why it chose a value); `header` lines first, as comments. A non-empty
    mapping (register.gates) is written one entry a line."""
    out: list[str] = [f"# {line}" if line else "#" for line in header]
    notes = notes or {}

    def dumped(key, value) -> str:
        text = yaml.safe_dump({key: value}, default_flow_style=True, width=1000).strip()
        return text[1:-1] if text.startswith("{") else text

    def emit(obj, path: tuple, indent: int):
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            comment = notes.get(path + (f.name,)) or f.metadata.get("help", "")
            tail = f"  # {comment}" if comment else ""
            pad = "  " * indent
            if dataclasses.is_dataclass(value):
                out.append(f"{pad}{f.name}:{tail}")
                emit(value, path + (f.name,), indent + 1)
            elif isinstance(value, dict) and value:
                out.append(f"{pad}{f.name}:{tail}")
                out.extend(f"{pad}  {dumped(key, item)}" for key, item in value.items())
            else:
                out.append(f"{pad}{dumped(f.name, value)}{tail}")

    emit(params if params is not None else Params(), (), 0)
    return "\n".join(out) + "\n"


def default_params_yaml() -> str:
    """The defaults as YAML with each field's help as a comment (used to write params.yaml)."""
    return params_yaml(Params())
