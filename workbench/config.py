"""The one run configuration: a typed tree shared by the CLI, the notebooks and the dashboard.

Every field carries its help text in `metadata["help"]` (the dashboard shows it next to each knob,
`workbench config --explain` prints it). Fields that mean what a `transformers.TrainingArguments`
field means have its name. `RunConfig.validate()` returns *every* problem with its fix;
`RunConfig.check()` raises them together as one `ConfigError`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import ConfigError, WorkbenchError

TASKS = ("text-classification",)  # the built-in tasks; the registry (`workbench.tasks.TASKS`) may hold more
INT_MAX = 2**31 - 1  # counts above this overflow the int32 the trainer's tensors and tokenizers use
SEED_MAX = 2**32 - 1  # numpy's seed range
NAME_MAX = 100  # run names name folders; keep paths well below OS limits
# The `transformers.training_args.OptimizerNames` that run with torch alone (tests check they are real);
# the rest need bitsandbytes, apex, torchao, galore, an XLA or NPU device, ...
OPTIMIZERS = ("adamw_torch_fused", "adamw_torch", "adafactor", "sgd", "adagrad", "rmsprop")
_NAME_FORBIDDEN = set('/\\:*?"<>|')  # path separators and what Windows refuses in a folder name
_RESERVED_NAMES = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}
# The CPU training speed-ups in workbench/speed.py, by the names `training.cpu_speedups` lists.
CPU_SPEEDUPS = ("dropout", "attention")


def _f(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with its help text (mutable defaults go through default_factory).

    Numeric fields carry their range in the metadata (`lo`/`gt` lower bound inclusive/exclusive,
    `hi`/`lt` upper bound inclusive/exclusive, `hint` for the message); `validate` checks every one.
    """
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class ModelConfig:
    """Which pretrained model to start from, and how to load it safely."""

    name_or_path: str = _f("minilm", "A built-in name (`workbench models`), a local folder with config.json and "
                           "weights, a GGUF file (or a folder holding one; converted once and cached), or a hub id "
                           "such as `bert-base-uncased` (needs a network).")
    revision: str | None = _f(None, "Hub revision (branch, tag or commit) when `name_or_path` is a hub id.")
    allow_pickle: bool = _f(False, "Allow pickle-based weight files (`.bin`, `.pt`). Pickle can run code while "
                            "loading: only enable this for files you trust. Safetensors are always preferred.")
    trust_remote_code: bool = _f(False, "Run Python code shipped with a hub model. Off unless you trust that model.")
    dropout: float | None = _f(None, "Override the model's dropout probabilities (hidden, attention, classifier). "
                               "Empty keeps the pretrained values.", lo=0, lt=1)
    pooling: Literal["auto", "mean"] = _f(
        "auto", "How a decoder classifier (Llama, SmolLM2) turns a text into the one vector its head reads. "
        "`auto`: the model's own way (the last token for decoders, [CLS] for encoders). `mean`: the average of every "
        "token's final hidden state, which does not depend on the model gathering the whole text into its last "
        "token; better on text the model reads poorly (SmolLM2 on Chinese: see the README). Decoders; "
        "text-classification and relation-extraction (the sequence classifiers); recorded with the run, so its "
        "model is read back the same way.")


AUGMENT_OPERATIONS = ("swap", "delete", "synonym", "paraphrase")
TRACKERS = ("tensorboard", "mlflow", "wandb")


@dataclass
class AugmentConfig:
    """More training examples made from the training split (never validation or test), seeded by training.seed."""

    operations: list[str] = _f([], "What makes the new examples: `swap` (two words trade places), `delete` (words "
                               "dropped), `synonym` (words replaced by a WordNet synonym; English; needs "
                               "`pip install 'workbench[augment]'`), `paraphrase` (the text rewritten by "
                               "`paraphrase_model`; slow on a CPU, so made at training only). Each operation makes "
                               "`copies` new examples per training example, with the original's label; copies "
                               "equal to a validation/test text are dropped. Text classification (the first text of "
                               "a pair) takes all four; token classification swap, delete and synonym on words "
                               "tagged O. Empty: no augmentation.")
    copies: int = _f(1, "New examples per training example and operation.", lo=1, hi=100, hint="typical: 1-4")
    word_share: float = _f(0.1, "swap/delete/synonym: share of a text's words changed (at least one).", gt=0, lt=1,
                           hint="typical: 0.1 (EDA's alpha)")
    paraphrase_model: str = _f("smollm2-135m", "paraphrase: the instruction-following model that rewrites texts "
                               "(a built-in name, a folder, or a finished causal-lm-sft run).")
    max_paraphrased: int | None = _f(200, "paraphrase: rewrite at most this many training examples (generation is "
                                     "slow on a CPU: SmolLM2-135M takes seconds per text). Empty: all.", lo=1,
                                     hi=INT_MAX)


@dataclass
class DataConfig:
    """Where the examples come from and which columns hold what."""

    source: str = _f("rotten_tomatoes", "A built-in data set (`workbench datasets`), a file (CSV, TSV, JSON, JSONL, "
                     "Parquet), or a hub data set id prefixed with `hub:` (needs a network).")
    validation_source: str | None = _f(None, "Optional separate validation file; otherwise split from `source`.")
    test_source: str | None = _f(None, "Optional separate test file; otherwise split from `source`.")
    text_column: str | None = _f(None, "Column with the text. Empty: guessed from common names (text, sentence, ...).")
    text_pair_column: str | None = _f(None, "Optional second text column for pair tasks (e.g. premise/hypothesis).")
    label_column: str | None = _f(None, "Column with the label (strings or integers). Empty: guessed (label, class, "
                                  "...).")
    prompt_template: str | None = _f(None, "causal-lm-sft, seq2seq: make the user turn (seq2seq: the source text) "
                                     "from each row's columns, e.g. `Translate to English:\\n{chinese}` ({column} is "
                                     "pasted in; `{{` is a literal brace); the answer is `label_column`. Turns "
                                     "translation or summary pairs into instruction data. Empty: a built-in's own "
                                     "template (hsk_zh_en, aclsum), else the prompt column as it is.")
    split_column: str | None = _f(None, "Optional column whose values (train/validation/test) assign each row a split.")
    validation_size: float = _f(0.1, "Share of rows held out for validation when no validation split is given.",
                                lo=0, lt=1, hint="a fraction, e.g. 0.1")
    test_size: float = _f(0.2, "Share of rows held out for testing when no test split is given.",
                          lo=0, lt=1, hint="a fraction, e.g. 0.2")
    max_train_samples: int | None = _f(None, "Use at most this many training rows (a seeded, stratified subset).",
                                       lo=1, hi=INT_MAX, hint="or empty for all rows")
    max_eval_samples: int | None = _f(None, "Use at most this many validation and test rows each.",
                                      lo=1, hi=INT_MAX, hint="or empty for all rows")
    max_length: int = _f(256, "Truncate texts to this many tokens. Batches are padded dynamically, never to this. "
                         "Values above the model's own limit (e.g. 512 positions for MiniLM) are lowered to it, "
                         "with a warning in the data report.", lo=8, hi=2**20, hint="typical: 128-512")
    packing: bool = _f(False, "causal-lm-sft: pack several training conversations into each row of up to "
                       "`max_length` tokens (best fit), so fewer, fuller rows carry the same tokens. Each "
                       "conversation still sees only itself (position ids restart per conversation and the "
                       "attention mask is block-diagonal) and its first token is never a target of the one "
                       "before. Training only: validation and test scoring see one conversation per row. The "
                       "data report says how many rows packing made and how full they are.")
    doc_stride: int = _f(128, "question-answering: a context longer than one window (data.max_length tokens with "
                         "the question) is split into overlapping windows; consecutive windows share this many "
                         "tokens, so an answer cut by one window's edge is whole in the next.", lo=0, hi=2**20,
                         hint="typical: a quarter to a third of max_length")
    max_answer_length: int = _f(30, "question-answering: the longest answer span predicted, in tokens.", lo=1,
                                hi=2**20, hint="typical: 30 (SQuAD); more for Chinese in a byte-level tokenizer")
    null_threshold: float = _f(0.0, "question-answering, for models trained with unanswerable questions: answer "
                               "nothing when the no-answer score beats the best span's by more than this (SQuAD "
                               "2.0's threshold; raise it to answer more often).", lo=-1e6, hi=1e6)
    delimiter: str | None = _f(None, "Force the CSV delimiter. Empty: detected (`,` `;` tab `|`).")
    encoding: str | None = _f(None, "Force the file encoding. Empty: the byte-order mark's (UTF-8/16/32), else UTF-8, "
                              "then cp1252 with a warning.")
    document_split: Literal["auto", "file", "paragraph", "line"] = _f(
        "auto", "masked-lm, causal-lm: where one document ends in a text corpus (`.txt` file or a folder of them): "
        "`paragraph` (blank lines between documents), `line` (one per line) or `file` (each file one document). "
        "`auto`: paragraphs for a single file, whole files for a folder. JSONL/CSV/Parquet: one row each.")
    mlm_probability: float = _f(0.15, "masked-lm: share of tokens chosen for prediction (BERT: 0.15); of those 80% "
                                "become [MASK], 10% a random token, 10% stay as they are.", gt=0, lt=1,
                                hint="typical: 0.15")
    whole_word_mask: bool = _f(False, "masked-lm: mask every piece of a word together (a word is the pieces "
                               "between spaces in the text; Chinese text has no spaces, so a whole run of "
                               "characters counts as one word: leave it off for Chinese). Chosen words all become "
                               "[MASK] (transformers' whole-word masking has no 10% random / 10% kept).")
    next_sentence_prediction: bool = _f(False, "masked-lm: also train next-sentence prediction (BERT's second "
                                        "objective; needs a model with a pre-training head, e.g. BERT): pairs of "
                                        "text spans, half of them followed by their real next sentences, half by "
                                        "sentences of another document.")
    split_seed: int | None = _f(None, "Seed of the train/validation/test split and of the max_*_samples subsets. "
                                "Empty: training.seed. Set it to keep one split while training.seed varies (runs "
                                "to ensemble, a seed study): the runs are then tested on the same examples.",
                                lo=0, hi=SEED_MAX)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    negative_ratio: float = _f(1.0, "relation-extraction, DuIE sentences (`text` + `spo_list`): pairs of a sentence's "
                               "entities with no triple between them become `no_relation` examples, at most this many "
                               "times the pairs with a relation (a seeded sample); 0 makes none. A flat table keeps "
                               "its rows as given.", lo=0, hi=1e6, hint="typical: 0.5 to 3")


@dataclass
class TrainingConfig:
    """Optimisation settings; names follow `transformers.TrainingArguments`."""

    learning_rate: float = _f(5e-5, "Peak learning rate of AdamW.", gt=0, hi=1,
                              hint="typical: 2e-5 to 5e-5 full, 1e-4 to 1e-3 LoRA")
    num_train_epochs: float = _f(3.0, "Passes over the training data.", lo=0, hi=1e6)
    max_steps: int = _f(-1, "If > 0, stop after this many optimizer steps (overrides epochs).", lo=-1, hi=INT_MAX,
                        hint="-1 trains for num_train_epochs")
    per_device_train_batch_size: int = _f(16, "Examples per training batch on each device.", lo=1, hi=INT_MAX)
    per_device_eval_batch_size: int = _f(64, "Examples per evaluation batch on each device.", lo=1, hi=INT_MAX)
    gradient_accumulation_steps: int = _f(1, "Batches whose gradients add up before one optimizer step.",
                                          lo=1, hi=INT_MAX)
    warmup_steps: float = _f(0.1, "Learning-rate warmup: a number of steps, or a fraction of all steps if < 1.",
                             lo=0, hi=INT_MAX, hint="a step count, or a fraction < 1")
    lr_scheduler_type: Literal["linear", "cosine", "constant", "constant_with_warmup"] = _f(
        "linear", "How the learning rate decays after warmup.")
    head_learning_rate: float | None = _f(
        None, "Peak learning rate of the new task head (a freshly initialised layer), when it should differ from "
        "learning_rate: a random head on a pretrained model, the more so under LoRA, often needs 5-20x the "
        "adapters' rate. Empty: learning_rate. Classification and NER.", gt=0, hi=1,
        hint="typical: 1e-3 to 1e-2, or empty")
    weight_decay: float = _f(0.01, "AdamW weight decay.", lo=0, hi=1, hint="typical: 0 to 0.1")
    max_grad_norm: float = _f(1.0, "Clip gradients to this norm; 0 turns clipping off.", lo=0, hi=1e6,
                              hint="0 turns clipping off")
    optim: str = _f("adamw_torch_fused", "Optimizer name as in TrainingArguments: " + ", ".join(
        f"`{o}`" for o in OPTIMIZERS) + " (the others need extra packages or hardware).")
    seed: int = _f(42, "Seed for initialisation, data order and splits: the same seed gives the same run on CPU.",
                   lo=0, hi=SEED_MAX)
    bf16: bool | Literal["auto"] = _f("auto", "bfloat16 mixed precision. `auto`: on where the hardware runs it fast "
                                      "(recent GPUs; CPUs with native bf16).")
    fp16: bool = _f(False, "float16 mixed precision (GPUs without bf16).")
    eval_strategy: Literal["no", "steps", "epoch"] = _f("epoch", "When to score the validation split.")
    eval_steps: int | None = _f(None, "With `eval_strategy: steps`, evaluate every this many steps.",
                                lo=1, hi=INT_MAX)
    save_strategy: Literal["no", "steps", "epoch"] = _f("epoch", "When to write a checkpoint.")
    save_steps: int | None = _f(None, "With `save_strategy: steps`, checkpoint every this many steps.",
                                lo=1, hi=INT_MAX)
    save_total_limit: int | None = _f(2, "Keep at most this many checkpoints (the best one is kept when "
                                      "`load_best_model_at_end` is on).", lo=1, hi=INT_MAX,
                                      hint="or empty for no limit")
    logging_steps: int = _f(10, "Write train loss and learning rate to metrics.jsonl every this many steps.",
                            lo=1, hi=INT_MAX)
    load_best_model_at_end: bool = _f(False, "At the end, reload the checkpoint with the best validation metric.")
    metric_for_best_model: str | None = _f(None, "Validation metric for early stopping and best model (accuracy, "
                                           "f1_macro, loss, ...; entity f1 for token classification). Empty: the "
                                           "task's headline metric (accuracy for classification, f1 for NER).")
    early_stopping_patience: int | None = _f(None, "Stop after this many evaluations without improvement. Empty: off.",
                                             lo=1, hi=INT_MAX, hint="or empty to turn early stopping off")
    class_weights: Literal["none", "balanced"] | dict[str, float] = _f(
        "none", "Weight each class in the classification loss. `none`: every example counts the same. `balanced`: "
        "weights inversely proportional to class frequency in the training split (scikit-learn's "
        "compute_class_weight), so a minority class is not ignored. Or a map {label: weight}, e.g. "
        "{rotten: 1.5}; labels left out get 1.0. The validation loss is weighted the same way; test scores are "
        "not. The weights used are recorded in the run's status.json.")
    use_cpu: bool = _f(False, "Train on the CPU even when a GPU is present.")
    torch_compile: bool = _f(False, "Compile the model with torch.compile (pays off on long GPU runs).")
    cpu_speedups: bool | list[str] = _f(True, "Speed-ups for training on a CPU that keep the maths the same "
                                        "(workbench/speed.py): `dropout` (FastDropout: four dropout masks per "
                                        "64-bit random draw) and `attention` (attention written out instead of "
                                        "SDPA's slower CPU paths). `true`: both; `false`: neither (the stock "
                                        "PyTorch and transformers modules); or a list of the ones to use, e.g. "
                                        "[dropout]. GPUs always use the stock modules.")
    adversarial: Literal["none", "fgm", "pgd"] = _f(
        "none", "Adversarial training on the input embeddings: each step also trains on a copy of the batch whose "
        "embeddings are pushed along the loss gradient. `fgm` (Fast Gradient Method: one push of size "
        "adversarial_epsilon, about 2x the compute per step), `pgd` (Projected Gradient Descent: adversarial_steps "
        "smaller pushes kept within adversarial_epsilon, about (1 + steps)x). The embeddings are restored exactly "
        "after each step.")
    adversarial_epsilon: float = _f(1.0, "Size (L2 norm) of the push on the embeddings; for pgd, the radius pushes "
                                    "stay within.", gt=0, hi=1e6, hint="typical: 0.1 to 1")
    adversarial_steps: int = _f(3, "pgd: pushes per training step.", lo=1, hi=100, hint="typical: 3")
    adversarial_alpha: float = _f(0.3, "pgd: size of each push.", gt=0, hi=1e6, hint="typical: epsilon / steps")
    report_to: list[str] = _f(["tensorboard"], "Experiment trackers that receive the run's logs, as in "
                              "TrainingArguments: `tensorboard` (event files in the run's `tensorboard/` folder; "
                              "`workbench tensorboard RUN` opens them), `mlflow`, `wandb` (each when installed), "
                              "or [] for none. metrics.jsonl is always written.")


@dataclass
class LoraSettings:
    """LoRA (`peft.LoraConfig`): low-rank adapters beside chosen linear layers, with the rsLoRA and DoRA variants."""

    r: int = _f(8, "LoRA rank: size of the adapter matrices.", lo=1, hi=INT_MAX, hint="typical: 4-64")
    lora_alpha: int = _f(16, "LoRA scaling: updates are scaled by lora_alpha / r (lora_alpha / sqrt(r) with "
                         "use_rslora).", gt=0, hi=INT_MAX, hint="typical: 2 x r")
    lora_dropout: float = _f(0.05, "Dropout on the LoRA path.", lo=0, lt=1)
    target_modules: list[str] | None = _f(None, "Module names (or types: every module whose name ends so) that get "
                                          "adapters. Empty: chosen per architecture (Llama: q/k/v/o_proj; BERT: "
                                          "query/key/value). `all-linear`: every linear layer but the head.")
    layers: list[int] | None = _f(None, "Only these layer indices get adapters (peft's layers_to_transform), e.g. "
                                  "[4, 5] for MiniLM's last two. Empty: every layer.")
    use_rslora: bool = _f(False, "Rank-stabilised LoRA: scale by lora_alpha / sqrt(r) instead of lora_alpha / r, so "
                          "higher ranks keep learning (Kalajdzievski, 2023).")
    use_dora: bool = _f(False, "DoRA: split each adapted weight into a magnitude and a direction and train the "
                        "magnitude too (Liu et al., 2024). Slower per step than LoRA.")


@dataclass
class AdaLoraSettings:
    """AdaLoRA (`peft.AdaLoraConfig`): LoRA whose rank budget is re-allocated between layers during training."""

    init_r: int = _f(12, "Starting rank of every adapter.", lo=1, hi=INT_MAX, hint="typical: 8-16")
    target_r: int = _f(4, "Average rank left after the budget is pruned.", lo=1, hi=INT_MAX, hint="typical: 2-8")
    lora_alpha: int = _f(16, "Scaling of the adapter updates.", gt=0, hi=INT_MAX)
    lora_dropout: float = _f(0.05, "Dropout on the adapter path.", lo=0, lt=1)
    target_modules: list[str] | None = _f(None, "Module names that get adapters. Empty: as for LoRA.")
    tinit: float = _f(0.1, "Steps of warm-up at the full budget before pruning starts: a count, or a share of all "
                      "steps if < 1.", lo=0, hi=INT_MAX)
    tfinal: float = _f(0.2, "Steps at the end with the budget fixed: a count, or a share of all steps if < 1.",
                       lo=0, hi=INT_MAX)
    deltaT: int = _f(10, "Re-allocate the budget every this many steps.", lo=1, hi=INT_MAX)
    orth_reg_weight: float = _f(0.5, "Weight of the orthogonality penalty on the adapter matrices.", lo=0, hi=1e6)


@dataclass
class IA3Settings:
    """IA³ (`peft.IA3Config`): learned vectors that rescale keys, values and feed-forward activations."""

    target_modules: list[str] | None = _f(None, "Modules whose activations are rescaled. Empty: peft's default for "
                                          "the architecture (keys, values and the feed-forward down projection).")
    feedforward_modules: list[str] | None = _f(None, "Which of target_modules are feed-forward layers (their "
                                               "inputs are rescaled, not their outputs). Empty: peft's default.")


@dataclass
class PrefixSettings:
    """Prefix tuning (`peft.PrefixTuningConfig`): trained key/value vectors prepended at every layer."""

    num_virtual_tokens: int = _f(20, "Virtual tokens prepended to every layer's keys and values.", lo=1, hi=4096,
                                 hint="typical: 10-100")
    prefix_projection: bool = _f(False, "Produce the prefix through a small MLP (the paper's reparameterisation; "
                                 "more trainable parameters, often steadier).")
    encoder_hidden_size: int | None = _f(None, "Hidden size of that MLP. Empty: the model's hidden size.", lo=1,
                                         hi=INT_MAX)


@dataclass
class PromptSettings:
    """Prompt tuning (`peft.PromptTuningConfig`): trained embeddings prepended to the input (soft prompt)."""

    num_virtual_tokens: int = _f(20, "Length of the soft prompt in tokens.", lo=1, hi=4096, hint="typical: 8-100")
    init_text: str | None = _f(None, "Start the soft prompt from the embeddings of this text (e.g. `Classify the "
                               "sentiment of this review:`). Empty: random.")


PEFT_METHODS = ("full", "lora", "adalora", "ia3", "prefix", "prompt")
# The flat LoRA fields of configs written before the per-method sections (still read, moved to `peft.lora`).
_LEGACY_LORA = ("r", "lora_alpha", "lora_dropout", "target_modules")


@dataclass
class PeftConfig:
    """Full fine-tuning, or a parameter-efficient method from `peft`; each method has its own section."""

    method: Literal["full", "lora", "adalora", "ia3", "prefix", "prompt"] = _f(
        "full", "`full` trains every weight (but the input embeddings, see `freeze_embeddings`). The others train "
        "a few new weights (plus the task head) and keep the model as it is: `lora` low-rank adapters (rsLoRA, "
        "DoRA and chosen layers in `peft.lora`), `adalora` LoRA with its rank budget moved to where it helps, "
        "`ia3` learned rescaling vectors, `prefix` trained keys/values at every layer, `prompt` a trained soft "
        "prompt. Each reads its own section (`peft.lora`, `peft.adalora`, ...).")
    freeze_embeddings: bool = _f(True, "With `full`: keep the input word embeddings fixed. They are half of "
                                 "MiniLM's weights and a fifth of SmolLM2's; updating them all at every step "
                                 "costs time (about an eighth of a CPU step) and optimizer memory, for no "
                                 "accuracy gain we measured on classification. `false`: train them too (needed "
                                 "for a model whose embeddings are not pretrained).")
    merge_adapter: bool = _f(False, "Also save a merged full model (adapter folded into the weights) in "
                             "`model/merged`: lora, adalora and ia3 (prefix and prompt tuning add inputs, nothing "
                             "to fold).")
    lora: LoraSettings = field(default_factory=LoraSettings)
    adalora: AdaLoraSettings = field(default_factory=AdaLoraSettings)
    ia3: IA3Settings = field(default_factory=IA3Settings)
    prefix: PrefixSettings = field(default_factory=PrefixSettings)
    prompt: PromptSettings = field(default_factory=PromptSettings)


@dataclass
class SearchConfig:
    """A hyper-parameter search with Optuna (`workbench search CONFIG`): each trial is a normal run."""

    space: dict[str, Any] = _f({}, "The parameters to search, by their config names: a list of choices "
                               "(`peft.method: [lora, full]`) or a range `{low: 1e-5, high: 1e-3, log: true}` "
                               "(floats; integers when low and high are whole numbers; `step` optional).")
    n_trials: int = _f(12, "Trials to run in all (a resumed study runs only the missing ones).", lo=1, hi=100000)
    metric: str | None = _f(None, "Validation metric to optimise. Empty: training.metric_for_best_model, else the "
                            "task's headline metric.")
    storage: str | None = _f(None, "Where the study lives: an SQLAlchemy URL. Empty: `sqlite:///<runs>/searches/"
                             "<study>/study.db`, which survives a restart. Give a shared database "
                             "(`postgresql://user@host/db`, `mysql://...`) to run trials from several machines.")
    study_name: str | None = _f(None, "The study's name (also its folder under the runs folder). Empty: the run "
                                "name, else made from the model and data.")
    pruner: Literal["median", "hyperband", "none"] = _f("median", "Stop unpromising trials early from their "
                                                        "intermediate validation scores.")
    sampler: Literal["tpe", "random"] = _f("tpe", "How trial parameters are chosen.")


@dataclass
class FsdpSettings:
    """FSDP (PyTorch's Fully Sharded Data Parallel, version 2, through accelerate): weights, gradients and optimizer
    state split across the processes."""

    sharding_strategy: Literal["FULL_SHARD", "SHARD_GRAD_OP"] = _f(
        "FULL_SHARD", "`FULL_SHARD`: each process keeps 1/N of the weights between uses and gathers a layer's whole "
        "weights only while it runs (least memory; ZeRO-3-like). `SHARD_GRAD_OP`: the gathered weights stay until "
        "the backward pass is done (more memory, fewer all-gathers; ZeRO-2-like).")
    auto_wrap: list[str] | None = _f(None, "The model classes each FSDP unit wraps: the decoder (or encoder) layer "
                                     "class, e.g. [LlamaDecoderLayer]. Empty: the model's own `_no_split_modules` "
                                     "(transformers' layer classes).")
    cpu_offload: bool = _f(False, "Keep the sharded weights and optimizer state in CPU memory between uses (less GPU "
                           "memory, slower steps).")
    state_dict_type: Literal["SHARDED_STATE_DICT"] = _f(
        "SHARDED_STATE_DICT", "How checkpoints are written: `SHARDED_STATE_DICT`, each process its own shard "
        "(torch.distributed.checkpoint; a resume may use another process count). The final model is always "
        "consolidated into one safetensors folder. (accelerate's FULL_STATE_DICT checkpoints are pickles the "
        "workbench does not resume from.)")


@dataclass
class DeepSpeedSettings:
    """DeepSpeed ZeRO (through accelerate/transformers; needs `pip install deepspeed` and a GPU)."""

    zero_stage: int = _f(2, "ZeRO stage: 2 shards gradients and optimizer state; 3 shards the weights too.",
                         lo=2, hi=3, hint="2 or 3")
    offload_optimizer: bool = _f(False, "Keep the optimizer state (and its step) in CPU memory (ZeRO-Offload).")
    offload_params: bool = _f(False, "ZeRO-3: keep the weights in CPU memory between uses (ZeRO-Infinity-like).")


@dataclass
class DistributedConfig:
    """Training on several processes, GPUs or machines: the workbench hands the run to torchrun and accelerate."""

    strategy: Literal["none", "ddp", "fsdp", "deepspeed"] = _f(
        "none", "`none`: one process. `ddp`: every process holds the whole model and they average gradients "
        "(DistributedDataParallel). `fsdp`: weights, gradients and optimizer state sharded across processes "
        "(`distributed.fsdp`). `deepspeed`: ZeRO stage 2 or 3 (`distributed.deepspeed`; GPUs only).")
    nproc_per_node: int = _f(1, "Processes per machine (one per GPU); `workbench train --nproc N` sets it.",
                             lo=1, hi=1024)
    nnodes: int = _f(1, "Machines taking part; each runs the same command (`workbench launch-cmd CONFIG`).",
                     lo=1, hi=4096)
    master_addr: str = _f("127.0.0.1", "Address of machine 0 (node rank 0), where the others meet (the rendezvous); "
                          "only used when nnodes > 1.")
    master_port: int = _f(29500, "Port on machine 0 for the rendezvous (nnodes > 1).", lo=1, hi=65535)
    rendezvous_timeout: int = _f(300, "Seconds a machine waits for the others (or for machine 0 to answer) before "
                                 "giving up with a message.", lo=1, hi=86400)
    fsdp: FsdpSettings = field(default_factory=FsdpSettings)
    deepspeed: DeepSpeedSettings = field(default_factory=DeepSpeedSettings)

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes


@dataclass
class RunConfig:
    """One fine-tuning run: task, model, data, training and PEFT settings."""

    task: str = _f("text-classification", "What the model learns to do: a registered task "
                   "(`workbench.tasks.TASKS`). Built in: text-classification.")
    name: str | None = _f(None, "Run name, also the run directory's name. Empty: made from model, data and time.")
    output_dir: str | None = _f(None, "Folder that holds run directories. Empty: `$WORKBENCH_RUNS` or `./runs`.")
    evaluate_before: bool = _f(True, "Score the test split with the model before fine-tuning, for before/after.")
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    # What was read differently from how it was written (old layouts), for front ends to show; not a field.
    load_notes: typing.ClassVar[list[str]] = []

    # --- (de)serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> "RunConfig":
        """Build from a nested dict; unknown keys and wrong types are all reported at once."""
        problems: list[str] = []
        raw, notes = _upgrade(raw or {}, problems)
        cfg = _build(cls, raw, "", problems)
        if problems:  # report the value problems of what did parse too: every problem at once
            raise ConfigError(problems + cfg.validate())
        cfg.load_notes = notes
        return cfg

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    @classmethod
    def from_yaml(cls, path_or_text: str | Path) -> "RunConfig":
        p = Path(path_or_text) if not (isinstance(path_or_text, str) and "\n" in path_or_text) else None
        if p is not None:
            if not p.is_file():
                raise ConfigError(f"config file {str(p)!r} not found: give the path to a YAML file "
                                  f"(examples are in configs/).")
            text = p.read_text(encoding="utf-8-sig")
        else:
            text = str(path_or_text)
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"{p or 'config'} is not valid YAML: {e}. Fix the line it names.") from None
        if raw is not None and not isinstance(raw, dict):
            raise ConfigError(f"{p or 'config'} must be a YAML mapping (key: value), got {type(raw).__name__}.")
        return cls.from_dict(raw)

    def override(self, dotted: dict[str, Any]) -> "RunConfig":
        """A copy with `{"training.learning_rate": 1e-4, ...}` applied (CLI `--set`, dashboard widgets)."""
        raw = self.to_dict()
        moved = [k for k in dotted if k.startswith("peft.") and k[5:] in _LEGACY_LORA]
        if moved:  # the old flat LoRA names (`--set peft.r=16`) still work, read as peft.lora.*
            dotted = {(f"peft.lora.{k[5:]}" if k in moved else k): v for k, v in dotted.items()}
        for key, value in dotted.items():
            *parents, leaf = key.split(".")
            node = raw
            for part in parents:
                if not isinstance(node.get(part), dict):
                    raise ConfigError(f"`{key}`: `{part}` is not a section. Sections: model, data, training, peft, "
                                      f"search, distributed.")
                node = node[part]
            node[leaf] = value
        cfg = RunConfig.from_dict(raw)
        if moved:
            cfg.load_notes = [f"{', '.join(moved)}: the old flat LoRA field names, read as "
                              f"{', '.join('peft.lora.' + k[5:] for k in moved)}; use those names."]
        return cfg

    @property
    def split_seed(self) -> int:
        """The seed that draws the splits: `data.split_seed`, else `training.seed`."""
        return self.training.seed if self.data.split_seed is None else self.data.split_seed

    # --- validation --------------------------------------------------------------------------
    def validate(self) -> list[str]:
        """Every problem with this config, each naming the field and the fix. Empty list: valid."""
        p: list[str] = []
        t, d, pe = self.training, self.data, self.peft
        from .tasks import TASKS as registered
        from .tasks import greater_is_better

        task = registered.get(self.task)
        if task is None:
            p.append(f"task: {self.task!r} is not a registered task; use one of {', '.join(registered)}.")
        elif t.eval_strategy != "no" and t.metric_for_best_model:
            # A task may score more on the test split than a validation pass computes (`validation_metrics`).
            known = getattr(task, "validation_metrics", None)
            try:
                greater_is_better(task, t.metric_for_best_model)
            except KeyError:
                p.append(f"training.metric_for_best_model={t.metric_for_best_model!r} is not a metric of {self.task}; "
                         f"use one of {', '.join(known or task.directions)}.")
            else:
                if known is not None and t.metric_for_best_model.removeprefix("eval_") not in known:
                    p.append(f"training.metric_for_best_model={t.metric_for_best_model!r} is scored on the test split "
                             f"only (it needs generation), not in validation passes; use one of {', '.join(known)}.")
        if not self.model.name_or_path:
            p.append("model.name_or_path is empty: give a built-in name (see `workbench models`), a folder or a "
                     "hub id.")
        p += _range_problems(self)
        if not d.source:
            p.append("data.source is empty: give a built-in data set (see `workbench datasets`) or a file path.")
        if _finite(d.validation_size, d.test_size) and d.validation_size + d.test_size >= 1:
            p.append(f"data.validation_size + data.test_size = {d.validation_size + d.test_size:g} leaves nothing "
                     f"to train on: keep their sum below 1 (e.g. 0.1 and 0.2).")
        if self.task == "question-answering" and _finite(d.doc_stride, d.max_length) and \
                d.doc_stride * 2 > d.max_length:
            p.append(f"data.doc_stride={d.doc_stride} is more than half of data.max_length={d.max_length}: each window "
                     f"would hold little new context. Fix: a quarter to a third of max_length (e.g. 128 for 384).")
        if d.prompt_template:
            from .tasks.causal_lm_sft.formats import template_fields
            if not getattr(task, "reads_prompt_template", False):  # causal-lm-sft, seq2seq
                users = ", ".join(n for n, t in registered.items() if getattr(t, "reads_prompt_template", False))
                p.append(f"data.prompt_template makes prompts for {users}; task {self.task} does not use it: "
                         f"leave it empty.")
            try:
                template_fields(d.prompt_template)
            except ValueError as e:
                p.append(f"data.prompt_template: {e}.")
        if self.task != "masked-lm" and (d.whole_word_mask or d.next_sentence_prediction):
            p.append("data.whole_word_mask / data.next_sentence_prediction are masked-lm settings; task "
                     f"{self.task} does not mask: set them to false.")
        elif d.whole_word_mask and d.next_sentence_prediction:
            p.append("data.whole_word_mask applies to masked-lm's blocks, not to next-sentence pairs: with "
                     "data.next_sentence_prediction the masks are per token. Fix: turn one of them off.")
        if d.packing and task is not None and not hasattr(task, "pack"):
            p.append(f"data.packing packs conversations for causal-lm-sft; task {self.task} does not pack its "
                     f"examples: set it to false.")
        if self.model.pooling != "auto" and getattr(task, "auto_model", None) != "AutoModelForSequenceClassification":
            p.append(f"model.pooling={self.model.pooling!r} chooses how a text classifier reads a text; task "
                     f"{self.task} predicts per token or writes text: set it to auto.")
        if t.head_learning_rate is not None and task is not None and \
                not getattr(task, "new_head", getattr(task, "needs_labels", True)):
            p.append(f"training.head_learning_rate is for a task with a new head (classification, NER); task "
                     f"{self.task} trains the model's own layers: leave it empty.")
        if d.text_column and d.label_column and d.text_column == d.label_column:
            p.append(f"data.text_column and data.label_column are both {d.text_column!r}: they must differ.")
        if isinstance(t.max_steps, int) and t.max_steps <= 0 and _finite(t.num_train_epochs) and \
                not t.num_train_epochs > 0:
            p.append("training.num_train_epochs must be > 0 (or set training.max_steps > 0).")
        if t.optim not in OPTIMIZERS:
            p.append(f"training.optim={str(t.optim)[:60]!r} is not an optimizer the workbench can run: use one of "
                     f"{', '.join(OPTIMIZERS)} (names as in transformers' TrainingArguments).")
        if t.bf16 is True and t.fp16:
            p.append("training.bf16 and training.fp16 are both on: choose one.")
        for kind in ("eval", "save"):
            if getattr(t, f"{kind}_strategy") == "steps" and getattr(t, f"{kind}_steps") is None:
                p.append(f"training.{kind}_strategy is 'steps' but training.{kind}_steps is empty: set it (e.g. 50).")
        if isinstance(t.cpu_speedups, list):
            for name in t.cpu_speedups:
                if name not in CPU_SPEEDUPS:
                    close = difflib.get_close_matches(name, CPU_SPEEDUPS, n=1)
                    p.append(f"training.cpu_speedups: {name!r} is not a CPU speed-up"
                             f"{f'; did you mean {close[0]!r}?' if close else '.'} Use true, false, or a list of "
                             f"{', '.join(CPU_SPEEDUPS)}.")
        if isinstance(t.class_weights, dict):
            if not t.class_weights:
                p.append("training.class_weights is an empty map: give {label: weight, ...}, or none/balanced.")
            for k, w in t.class_weights.items():
                if not _finite(w) or w <= 0:
                    p.append(f"training.class_weights[{str(k)[:60]!r}]={w!r}: a weight must be a number > 0.")
        if t.class_weights != "none" and task is not None and not hasattr(task, "class_weights"):
            p.append(f"training.class_weights applies to classification; task {self.task} has no class weights: "
                     f"set it to none.")
        if (t.early_stopping_patience is not None or t.load_best_model_at_end) and t.eval_strategy == "no":
            p.append("training.early_stopping_patience / load_best_model_at_end need validation scores: "
                     "set training.eval_strategy to 'epoch' or 'steps'.")
        if t.load_best_model_at_end and t.save_strategy != t.eval_strategy:
            p.append(f"training.load_best_model_at_end needs save_strategy == eval_strategy (now "
                     f"{t.save_strategy!r} vs {t.eval_strategy!r}): set both to the same value.")
        for section in ("lora", "adalora", "ia3"):
            for name in ("target_modules", "feedforward_modules", "layers"):
                value = getattr(getattr(pe, section), name, None)
                if pe.method == section and value is not None and not value:
                    p.append(f"peft.{section}.{name} is an empty list: list some, or leave it empty (null) for the "
                             f"default.")
        if pe.merge_adapter and pe.method not in ("lora", "adalora", "ia3"):
            p.append(f"peft.merge_adapter folds an adapter into the weights: lora, adalora and ia3; "
                     f"peft.method={pe.method!r} has nothing to fold. Set it to false.")
        if task is not None and pe.method != "full":
            from .peft_methods import task_problem  # no torch: validation stays light
            if (why := task_problem(task, pe.method)) is not None:
                p.append(why)
        for section in ("lora", "adalora"):
            targets = getattr(pe, section).target_modules or []
            if "all-linear" in targets and len(targets) > 1:
                p.append(f"peft.{section}.target_modules: `all-linear` already means every linear layer but the head; "
                         f"give it alone, or list module names without it.")
        if pe.method == "adalora" and isinstance(t.max_steps, int) and t.max_steps > 0:
            from .peft_methods import adalora_schedule
            try:
                adalora_schedule(pe, t.max_steps)
            except WorkbenchError as e:
                p.append(str(e))
        if pe.adalora.target_r > pe.adalora.init_r:
            p.append(f"peft.adalora.target_r={pe.adalora.target_r} is above init_r={pe.adalora.init_r}: the budget "
                     f"only shrinks. Fix: target_r <= init_r.")
        if t.adversarial == "pgd" and _finite(t.adversarial_alpha, t.adversarial_epsilon) and \
                t.adversarial_alpha > t.adversarial_epsilon:
            p.append(f"training.adversarial_alpha={t.adversarial_alpha:g} is above adversarial_epsilon="
                     f"{t.adversarial_epsilon:g}: each pgd push would leave the allowed radius at once. Fix: "
                     f"alpha around epsilon / adversarial_steps.")
        for name in t.report_to:
            if name not in TRACKERS:
                close = difflib.get_close_matches(name, TRACKERS, n=1)
                p.append(f"training.report_to: {name!r} is not a tracker the workbench knows"
                         f"{f'; did you mean {close[0]!r}?' if close else '.'} Use a list of {', '.join(TRACKERS)}, "
                         f"or [] for none.")
        from .tracking import missing_message, missing_trackers
        p += [missing_message(name) for name in missing_trackers(list(dict.fromkeys(t.report_to)))]
        for op in d.augment.operations:
            if op not in AUGMENT_OPERATIONS:
                close = difflib.get_close_matches(op, AUGMENT_OPERATIONS, n=1)
                p.append(f"data.augment.operations: {op!r} is not an operation"
                         f"{f'; did you mean {close[0]!r}?' if close else '.'} Use some of "
                         f"{', '.join(AUGMENT_OPERATIONS)}.")
        if len(set(d.augment.operations)) < len(d.augment.operations):
            p.append("data.augment.operations names an operation twice: list each once (data.augment.copies sets "
                     "how many examples each makes).")
        from .augment import applicable_problems
        p += applicable_problems(task, self.task, d.augment.operations, registered)
        if self.name is not None:
            p += _name_problems(self.name)
        from .search import space_problems  # imports nothing heavy: Optuna only when a search runs
        p += space_problems(self)
        from .distributed import config_problems  # no torch import: validation stays light
        p += config_problems(self)
        return p

    def check(self) -> "RunConfig":
        """Raise `ConfigError` listing every problem; return self when valid."""
        problems = self.validate()
        if problems:
            raise ConfigError(problems)
        return self


# --- helpers ---------------------------------------------------------------------------------
def _finite(*values: Any) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e16 else f"{x:g}"


def _bounds_text(m: dict[str, Any]) -> str:
    lo = f">= {_num(m['lo'])}" if "lo" in m else f"> {_num(m['gt'])}" if "gt" in m else ""
    hi = f"<= {_num(m['hi'])}" if "hi" in m else f"< {_num(m['lt'])}" if "lt" in m else ""
    return " and ".join(x for x in (lo, hi) if x)


def _range_problems(cfg: Any, prefix: str = "") -> list[str]:
    """Finiteness and range of every numeric field, from the bounds in its metadata."""
    out: list[str] = []
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            out += _range_problems(v, f"{prefix}{f.name}.")
            continue
        m = f.metadata
        if not any(k in m for k in ("lo", "gt", "hi", "lt")) or v is None:
            continue
        where = f"{prefix}{f.name}={v!r}" if not isinstance(v, (int, float)) or isinstance(v, bool) else \
            f"{prefix}{f.name}={v:g}" if isinstance(v, float) else f"{prefix}{f.name}={v}"
        hint = f" ({m['hint']})" if "hint" in m else ""
        if not _finite(v):
            what = "a number" if not isinstance(v, (int, float)) or isinstance(v, bool) else "a finite number"
            out.append(f"{where}: must be {what}, {_bounds_text(m)}{hint}.")
        elif ("lo" in m and v < m["lo"]) or ("gt" in m and v <= m["gt"]) or ("hi" in m and v > m["hi"]) or \
                ("lt" in m and v >= m["lt"]):
            out.append(f"{where}: must be {_bounds_text(m)}{hint}.")
    return out


def _name_problems(name: Any) -> list[str]:
    if not isinstance(name, str):
        return [f"name={name!r}: must be text (it names the run's folder)."]
    shown = repr(name if len(name) <= 60 else name[:60] + "...")
    bad = sorted({c for c in name if c in _NAME_FORBIDDEN or not c.isprintable()})
    out = []
    if not name.strip() or name.strip() in (".", ".."):
        out.append(f"name={shown}: a run name cannot be empty, '.' or '..' (it names a folder).")
    if len(name) > NAME_MAX:
        out.append(f"name={shown} is {len(name)} characters long: keep it to {NAME_MAX} or fewer (it names a folder).")
    if bad:
        out.append(f"name={shown} contains {' '.join(repr(c) for c in bad)}: a run name cannot hold path separators, "
                   f"control characters or any of {''.join(sorted(_NAME_FORBIDDEN))} (it names a folder).")
    if name.strip() and (name != name.strip() or name.endswith(".")):
        out.append(f"name={shown}: remove the leading/trailing spaces and trailing dots.")
    if name.split(".")[0].strip().lower() in _RESERVED_NAMES:
        out.append(f"name={shown}: {name.split('.')[0]!r} is a reserved device name on Windows; choose another.")
    return out


def _type_ok(value: Any, hint: Any) -> tuple[bool, Any]:
    """Check (and gently coerce) a YAML value against a field's type hint."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        if value is None and type(None) in args:
            return True, None
        for a in args:
            if a is type(None):
                continue
            ok, v = _type_ok(value, a)
            if ok:
                return True, v
        return False, value
    if origin is Literal:
        return (value in args), value
    if origin is dict and args[1] is Any:  # search.space: checked by workbench.search
        return isinstance(value, dict), {str(k): v for k, v in value.items()} if isinstance(value, dict) else value
    if origin is dict:  # {label: weight}: YAML may read a label such as 1 or true as a non-string key
        ok = isinstance(value, dict) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                             for v in value.values())
        return ok, {str(k): float(v) for k, v in value.items()} if ok else value
    if origin is list:
        if args and args[0] is int:  # layer indices
            ok = isinstance(value, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in value)
            return ok, value
        if isinstance(value, str):
            value = [s.strip() for s in value.split(",") if s.strip()]
        return isinstance(value, list) and all(isinstance(x, str) for x in value), value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        if isinstance(value, bool):
            return False, value
        if isinstance(value, float) and value.is_integer():
            return True, int(value)
        return isinstance(value, int), value
    if hint is float:
        if isinstance(value, bool):
            return False, value
        if isinstance(value, str):
            try:
                return True, float(value)  # YAML reads `5e-5` as a string
            except ValueError:
                return False, value
        return isinstance(value, (int, float)), float(value) if isinstance(value, (int, float)) else value
    if hint is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, str(value)
        return isinstance(value, str), value
    return True, value


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) is dict:
        return "a map {name: number}"
    if typing.get_origin(hint) is typing.Union or str(typing.get_origin(hint)) == "<class 'types.UnionType'>":
        return " or ".join(_describe(a) for a in typing.get_args(hint) if a is not type(None))
    return str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")


def _build(cls: type, raw: Any, prefix: str, problems: list[str]) -> Any:
    if not isinstance(raw, dict):
        problems.append(f"{prefix.rstrip('.') or 'config'}: expected a mapping of fields, got {raw!r}.")
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" Did you mean `{prefix}{close[0]}`?" if close else f" Known fields: {', '.join(fields)}."
            problems.append(f"`{prefix}{key}` is not a config field.{hint}")
            continue
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value, f"{prefix}{key}.", problems)
            continue
        ok, coerced = _type_ok(value, hint)
        if not ok:
            problems.append(f"`{prefix}{key}` = {value!r} has the wrong type: expected {_describe(hint)}.")
            continue
        kwargs[key] = coerced
    return cls(**kwargs)


def _upgrade(raw: Any, problems: list[str]) -> tuple[Any, list[str]]:
    """Read configs written before the per-method `peft` sections: `peft.r` etc. move to `peft.lora`."""
    if not isinstance(raw, dict) or not isinstance(raw.get("peft"), dict):
        return raw, []
    peft = dict(raw["peft"])
    flat = [k for k in _LEGACY_LORA if k in peft]
    if not flat:
        return raw, []
    lora = peft.get("lora")
    if lora is not None and not isinstance(lora, dict):
        return raw, []  # _build reports the section's type
    lora = dict(lora or {})
    both = [k for k in flat if k in lora]
    if both:
        problems.append(f"peft.{both[0]} and peft.lora.{both[0]} are both set: keep peft.lora.{both[0]} (the flat "
                        f"LoRA fields are the old layout) and delete peft.{both[0]}.")
        return {**raw, "peft": {k: v for k, v in peft.items() if k not in flat}}, []
    for k in flat:
        lora[k] = peft.pop(k)
    peft["lora"] = lora
    note = (f"this config uses the old flat LoRA fields ({', '.join('peft.' + k for k in flat)}); they were read as "
            f"{', '.join('peft.lora.' + k for k in flat)}. Move them under `peft: lora:` to silence this note.")
    return {**raw, "peft": peft}, [note]


def leaf_fields(cls: type | None = None, prefix: str = "") -> dict[str, tuple[Any, dict[str, Any]]]:
    """Every leaf field of the run config, sections inside sections too: dotted name -> (type hint, metadata)."""
    out: dict[str, tuple[Any, dict[str, Any]]] = {}
    hints = typing.get_type_hints(cls or RunConfig)
    for f in dataclasses.fields(cls or RunConfig):
        if dataclasses.is_dataclass(hints[f.name]):
            out.update(leaf_fields(hints[f.name], f"{prefix}{f.name}."))
        else:
            out[prefix + f.name] = (hints[f.name], dict(f.metadata))
    return out


def field_help(section: str | None = None) -> dict[str, str]:
    """`{"training.learning_rate": "Peak learning rate ...", ...}` for help texts in every front end."""
    out = {name: meta.get("help", "") for name, (_, meta) in leaf_fields().items()}
    from .tasks import TASKS as registered
    out["task"] = out["task"].split(" Built in:")[0] + " Registered: " + ", ".join(registered) + "."
    if section:
        out = {k: v for k, v in out.items() if k.startswith(section + ".")}
    return out


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read a YAML config, apply dotted overrides, and validate it (raises `ConfigError`)."""
    cfg = RunConfig.from_yaml(path)
    notes = cfg.load_notes
    if overrides:
        cfg = cfg.override(overrides)
        cfg.load_notes = notes + cfg.load_notes
    return cfg.check()
