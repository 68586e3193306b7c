"""The training configuration (section ``train`` of conf/bigtrain.yaml); saved inside every checkpoint."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from core.config import require as _require


@dataclass(frozen=True)
class CnnConfig:
    conv_channels: list[int]
    hidden: int
    dropout: float

    def validate(self, prefix: str) -> None:
        _require(len(self.conv_channels) == 2 and all(c > 0 for c in self.conv_channels),
                 f"{prefix}.conv_channels", f"must be two positive integers, got {self.conv_channels}")
        _require(self.hidden > 0, f"{prefix}.hidden", f"must be positive, got {self.hidden}")
        _require(0.0 <= self.dropout < 1.0, f"{prefix}.dropout", f"must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class RnnConfig:
    embed_dim: int
    hidden: int
    layers: int
    bidirectional: bool
    dropout: float

    def validate(self, prefix: str) -> None:
        for name in ("embed_dim", "hidden", "layers"):
            _require(getattr(self, name) > 0, f"{prefix}.{name}", f"must be positive, got {getattr(self, name)}")
        _require(0.0 <= self.dropout < 1.0, f"{prefix}.dropout", f"must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class FastTextConfig:
    """The bag-of-embeddings classifier: the mean of its tokens' (and, with ``bigrams``, hashed word pairs')
    embeddings, then a linear layer."""
    embed_dim: int = 64
    bigrams: bool = True
    bigram_buckets: int = 50_000
    dropout: float = 0.0

    def validate(self, prefix: str) -> None:
        for name in ("embed_dim", "bigram_buckets"):
            _require(getattr(self, name) > 0, f"{prefix}.{name}", f"must be positive, got {getattr(self, name)}")
        _require(0.0 <= self.dropout < 1.0, f"{prefix}.dropout", f"must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class TransformerConfig:
    """The Transformer encoder classifier: token and learned position embeddings, ``layers`` pre-norm encoder
    layers of ``heads`` heads over the real tokens (a padding mask), the mean of its outputs, then a linear layer."""
    dim: int = 64
    heads: int = 4
    layers: int = 2
    ff_dim: int = 128
    dropout: float = 0.1

    def validate(self, prefix: str) -> None:
        for name in ("dim", "heads", "layers", "ff_dim"):
            _require(getattr(self, name) > 0, f"{prefix}.{name}", f"must be positive, got {getattr(self, name)}")
        _require(self.dim % self.heads == 0, f"{prefix}.dim",
                 f"must be a multiple of {prefix}.heads ({self.heads}), got {self.dim}")
        _require(0.0 <= self.dropout < 1.0, f"{prefix}.dropout", f"must be in [0, 1), got {self.dropout}")


BUILTIN_MODELS = ("auto", "cnn", "rnn", "lstm", "gru", "fasttext", "transformer")
IMPORT_PATH = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*")


def model_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a model (None when it can): a built-in one, or ``package.module:factory``."""
    if name in BUILTIN_MODELS or IMPORT_PATH.fullmatch(name):
        return None
    return (f"{name!r} is neither a built-in model ({', '.join(BUILTIN_MODELS)}) nor an import path "
            "package.module:factory")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int
    batch_size: int
    lr: float | None
    scale_lr: bool
    momentum: float
    weight_decay: float | None    # null: the model's default
    seed: int
    optimizer: Literal["auto", "sgd", "adam"]
    model: str                    # a built-in model (BUILTIN_MODELS) or package.module:factory
    cnn: CnnConfig
    rnn: RnnConfig
    length_bucketing: bool
    loader_workers: int | Literal["auto"]
    prefetch_batches: int
    shuffle_buffer: int
    log_every: int
    progress_bar: Literal["auto", "always", "never"]
    lr_schedule: Literal["constant", "step", "cosine"] = "constant"
    warmup_epochs: float = 0.0
    lr_step_epochs: int = 10
    lr_gamma: float = 0.1
    backward_passes_per_step: int = 1
    fp16_compression: bool = False
    grad_clip_norm: float | None = None
    mixed_precision: bool = False
    early_stopping_patience: int = 0
    # an epoch improves on the best validation loss when it is lower by more than both margins (early_stopping_margin)
    early_stopping_min_delta_relative: float = 0.0  # a share of the best loss: 0.001 = 0.1%, whatever the loss's scale
    early_stopping_min_delta_absolute: float = 0.0  # in units of the loss
    early_stopping_min_delta: float | None = None   # the old name of early_stopping_min_delta_absolute, still read
    checkpoint_every_steps: int = 0
    keep_checkpoints: int = 2
    resume: Literal["auto", "require", "never"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # defaults here too: a checkpoint saved before these sections existed still names a whole config
    fasttext: FastTextConfig = field(default_factory=FastTextConfig)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    model_config: dict[str, Any] = field(default_factory=dict)  # handed to a model factory (train.model a:b)
    loss: str = "cross_entropy"   # or package.module:function, (logits, labels) -> one loss per row
    collate: str | None = None    # package.module:function, the batch's inputs -> the model's inputs
    keep_best: bool = True        # end with the weights of the last epoch that improved (early_stopping_margin)
    max_data_stall: float | None = None  # a rank's share of step time waiting for data; None: no budget
    stall_budget_action: Literal["warn", "fail"] = "warn"
    max_read_errors: int = 10  # stored rows that fail to read (each replaced by a stand-in) before the run stops, exit 8
    watchdog_seconds: float = 300.0  # no rank progressing this long: hang.json, stacks, exit 5; 0: off
    allow_single_class: bool = False  # train on a train split of one class (a model right every time, learning nothing)
    threads: int | Literal["auto"] = "auto"  # torch's compute threads per rank (distributed.set_threads)

    def validate(self, prefix: str) -> None:
        problem = model_name_problem(self.model)
        _require(problem is None, f"{prefix}.model", problem or "")
        _require(self.loss == "cross_entropy" or IMPORT_PATH.fullmatch(self.loss) is not None, f"{prefix}.loss",
                 f"{self.loss!r} is neither cross_entropy nor an import path package.module:function")
        _require(self.collate is None or IMPORT_PATH.fullmatch(self.collate) is not None, f"{prefix}.collate",
                 f"{self.collate!r} is not an import path package.module:function (or null)")
        _require(self.epochs >= 1, f"{prefix}.epochs", f"must be at least 1, got {self.epochs}")
        _require(self.batch_size >= 1, f"{prefix}.batch_size", f"must be at least 1, got {self.batch_size}")
        _require(self.lr is None or self.lr > 0, f"{prefix}.lr", f"must be positive (or null for auto), got {self.lr}")
        _require(0.0 <= self.momentum < 1.0, f"{prefix}.momentum", f"must be in [0, 1), got {self.momentum}")
        _require(self.weight_decay is None or self.weight_decay >= 0, f"{prefix}.weight_decay",
                 f"must be >= 0 (or null for the model's default), got {self.weight_decay}")
        _require(self.loader_workers == "auto" or self.loader_workers >= 0, f"{prefix}.loader_workers",
                 f"must be auto or >= 0 (0: in the training process), got {self.loader_workers}")
        _require(self.prefetch_batches >= 0, f"{prefix}.prefetch_batches", f"must be >= 0, got {self.prefetch_batches}")
        _require(self.shuffle_buffer >= 0, f"{prefix}.shuffle_buffer", f"must be >= 0, got {self.shuffle_buffer}")
        _require(self.log_every >= 1, f"{prefix}.log_every", f"must be at least 1, got {self.log_every}")
        _require(0 <= self.warmup_epochs <= self.epochs, f"{prefix}.warmup_epochs",
                 f"must be in [0, epochs={self.epochs}], got {self.warmup_epochs}")
        _require(self.lr_step_epochs >= 1, f"{prefix}.lr_step_epochs", f"must be at least 1, got {self.lr_step_epochs}")
        _require(0 < self.lr_gamma <= 1, f"{prefix}.lr_gamma", f"must be in (0, 1], got {self.lr_gamma}")
        _require(self.backward_passes_per_step >= 1, f"{prefix}.backward_passes_per_step",
                 f"must be at least 1, got {self.backward_passes_per_step}")
        _require(self.grad_clip_norm is None or self.grad_clip_norm > 0, f"{prefix}.grad_clip_norm",
                 f"must be positive (or null for no clipping), got {self.grad_clip_norm}")
        _require(self.early_stopping_patience >= 0, f"{prefix}.early_stopping_patience",
                 f"must be >= 0 (0 = off), got {self.early_stopping_patience}")
        self._validate_early_stopping_margins(prefix)
        _require(self.checkpoint_every_steps >= 0, f"{prefix}.checkpoint_every_steps",
                 f"must be >= 0 (0 = at epoch ends only), got {self.checkpoint_every_steps}")
        _require(self.max_read_errors >= 0, f"{prefix}.max_read_errors",
                 f"must be 0 or more (a count of rows), got {self.max_read_errors}")
        _require(self.max_data_stall is None or 0 < self.max_data_stall < 1, f"{prefix}.max_data_stall",
                 f"must be a fraction in (0, 1) (or null for no budget), got {self.max_data_stall}")
        _require(self.threads == "auto" or self.threads >= 1, f"{prefix}.threads",
                 f"must be auto or at least 1, got {self.threads}")
        _require(self.watchdog_seconds >= 0, f"{prefix}.watchdog_seconds",
                 f"must be >= 0 (0 = no watchdog), got {self.watchdog_seconds}")
        _require(self.keep_checkpoints >= 1, f"{prefix}.keep_checkpoints",
                 f"must be at least 1, got {self.keep_checkpoints}")

    def _validate_early_stopping_margins(self, prefix: str) -> None:
        relative, absolute, old = (self.early_stopping_min_delta_relative, self.early_stopping_min_delta_absolute,
                                   self.early_stopping_min_delta)
        _require(0 <= relative < 1, f"{prefix}.early_stopping_min_delta_relative",
                 f"must be a share of the best loss in [0, 1) (0.001 = 0.1%), got {relative}")
        _require(absolute >= 0, f"{prefix}.early_stopping_min_delta_absolute", f"must be >= 0, got {absolute}")
        _require(old is None or old >= 0, f"{prefix}.early_stopping_min_delta", f"must be >= 0, got {old}")
        _require(old is None or absolute in (0, old), f"{prefix}.early_stopping_min_delta",
                 f"is the old name of {prefix}.early_stopping_min_delta_absolute; set only that one (got {old} and "
                 f"{absolute})")

    def early_stopping_margin(self, best_val_loss: float) -> float:
        """How much lower than ``best_val_loss`` a validation loss must be to count as an improvement: the larger
        of the relative margin (a share of the loss, so that a loss of 0.0009 still improves to 0.0001) and the
        absolute one."""
        return max(self.early_stopping_absolute_margin, self.early_stopping_min_delta_relative * abs(best_val_loss))

    @property
    def early_stopping_absolute_margin(self) -> float:
        """``early_stopping_min_delta_absolute``, or ``early_stopping_min_delta`` (its old name) where that is set."""
        old = self.early_stopping_min_delta
        return self.early_stopping_min_delta_absolute if old is None else old
