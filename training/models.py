"""Models. The CNN is the classic conv-pool-conv-pool-fc-fc network with its flattened size derived from the input;
the RNN classifier family (rnn, lstm, gru) embeds token ids and classifies from each sequence's last real step; the
bag-of-embeddings classifier (fasttext) averages token and word-pair embeddings; the Transformer encoder attends
over the real tokens only. Every sequence model gives a sequence the same logits alone or padded in a batch.

A user's model is named by an import path, ``package.module:factory`` (``train.model``, ``--model``): the factory
is called as ``factory(dataset, model_config)`` with the dataset's ``DatasetSpec`` and the ``train.model_config``
mapping, and returns an ``nn.Module`` whose ``forward`` takes the batch inputs of the dataset's kind (images float32
``(B, C, H, W)`` in [0, 1], or uint8 0..255 where the model sets ``wants_uint8 = True``; or token ids int64
``(B, T)`` and lengths int64 ``(B,)``) and returns logits ``(B, classes)`` (``training.model_inputs``).
"""
from __future__ import annotations

import importlib
import math
from typing import Any, Callable

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from core.errors import ConfigError
from core.logs import with_article
from dataset.manifest import DatasetSpec
from training.config import IMPORT_PATH

RNN_CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
SEQUENCE_MODELS = (*RNN_CELLS, "fasttext", "transformer")
# fasttext for sequences: on the real-text set it is the one model that beats the bag-of-words baseline, in seconds
# (benchmarks/text_models.py; README "Text models on real text"). Where labels hang on word order (the sample
# reviews) it is no better than the bag of words, 0.53 against the LSTM's 1.00: there, --model lstm
DEFAULT_MODEL = {"image": "cnn", "sequence": "fasttext"}
# (optimizer, learning rate per rank, weight decay) that train each family well; config can override each.
# Plain SGD at 0.01 leaves the LSTM at chance on the sample texts after 8 epochs; Adam at 0.002 reaches 100%. On the
# real-text set (benchmarks/text_models.py) weight decay in Adam holds the bag of embeddings back (0.81 test accuracy
# at lr 0.01 with 0.0005, 0.83 without), so the models measured there train without it.
DEFAULT_OPTIMIZER = {"cnn": ("sgd", 0.01, 0.0005), "rnn": ("adam", 0.002, 0.0005), "lstm": ("adam", 0.002, 0.0005),
                     "gru": ("adam", 0.002, 0.0005), "fasttext": ("adam", 0.01, 0.0),
                     "transformer": ("adam", 0.0005, 0.0)}
CUSTOM_OPTIMIZER = ("adam", 0.001, 0.0)  # a model from an import path: PyTorch's Adam defaults


class CNN(nn.Module):
    wants_uint8 = True  # training.model_inputs: it scales the images itself, so a checkpoint takes uint8 anywhere

    def __init__(self, *, in_channels: int, image_size: int, num_classes: int,
                 conv_channels: tuple[int, int] = (32, 64), hidden: int = 128, dropout: float = 0.25):
        super().__init__()
        c1, c2 = conv_channels
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, kernel_size=5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, kernel_size=5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        )
        with torch.no_grad():  # the flattened size follows from the input shape, whatever image_size is
            flat = self.features(torch.zeros(1, in_channels, image_size, image_size)).numel()
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:  # the loader's images: scaled here, on the model's device, not on the host
            x = x.float().div_(255.0)
        return self.classifier(self.features(x))


class RNNClassifier(nn.Module):
    """Embedding -> RNN/LSTM/GRU over packed sequences -> linear.

    Sequences are packed with their true lengths, so padding never enters the recurrence: the final hidden state is
    the one after each sequence's last real token (and, bidirectionally, after its first), whatever the batch's
    longest sequence. A sequence therefore gets the same logits alone or padded inside a batch.
    """

    def __init__(self, *, cell: str, vocab_size: int, num_classes: int, embed_dim: int = 64, hidden: int = 128,
                 layers: int = 1, bidirectional: bool = True, dropout: float = 0.0):
        super().__init__()
        if cell not in RNN_CELLS:
            raise ValueError(f"cell {cell!r} is not one of {', '.join(RNN_CELLS)}")
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.rnn = RNN_CELLS[cell](embed_dim, hidden, num_layers=layers, batch_first=True,
                                   bidirectional=bidirectional, dropout=dropout if layers > 1 else 0.0)
        self.directions = 2 if bidirectional else 1
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden * self.directions, num_classes)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        lengths = lengths.cpu()  # packing reads them on the host (the loader leaves them there)
        # Rows already longest first (the training loader's batches) are packed as they are; otherwise packing
        # reorders them with an index copied to the GPU, which makes the host wait for the GPU at every step.
        longest_first = bool((lengths[:-1] >= lengths[1:]).all())
        packed = pack_padded_sequence(self.embedding(tokens), lengths, batch_first=True, enforce_sorted=longest_first)
        _, state = self.rnn(packed)
        hidden = state[0] if isinstance(state, tuple) else state  # LSTM returns (h, c)
        last = torch.cat(list(hidden[-self.directions:]), dim=1)  # the top layer, every direction
        return self.head(self.dropout(last))


def real_tokens(tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: True at each sequence's real tokens, False at its padding."""
    lengths = lengths.to(tokens.device, non_blocking=True)
    return torch.arange(tokens.shape[1], device=tokens.device)[None, :] < lengths[:, None]


class BagOfEmbeddings(nn.Module):
    """fastText's classifier (Joulin et al., 2016): the mean of the embeddings of a sequence's tokens and, with
    ``bigrams``, of its adjacent token pairs hashed into ``bigram_buckets`` rows, then dropout and a linear layer.
    Padding is masked out of the mean, so a sequence gets the same logits however it is padded."""

    PRIME = 1_000_003  # pair (a, b) -> (a * PRIME + b) mod buckets

    def __init__(self, *, vocab_size: int, num_classes: int, embed_dim: int = 64, bigrams: bool = True,
                 bigram_buckets: int = 50_000, dropout: float = 0.0):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.bigrams = nn.Embedding(bigram_buckets, embed_dim) if bigrams else None
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(embed_dim, num_classes)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        tokens = tokens.long()
        real = real_tokens(tokens, lengths)
        total = (self.embedding(tokens) * real[..., None]).sum(1)
        count = real.sum(1)
        if self.bigrams is not None and tokens.shape[1] > 1:
            pairs = (tokens[:, :-1] * self.PRIME + tokens[:, 1:]) % self.bigrams.num_embeddings
            pair_real = real[:, 1:]  # both tokens real
            total = total + (self.bigrams(pairs) * pair_real[..., None]).sum(1)
            count = count + pair_real.sum(1)
        return self.head(self.dropout(total / count.clamp(min=1)[:, None]))


class TransformerClassifier(nn.Module):
    """A small Transformer encoder: token embeddings (scaled by sqrt(dim)) plus learned position embeddings,
    ``layers`` pre-norm encoder layers whose attention sees the real tokens only (``src_key_padding_mask``), the
    mean of the outputs at the real tokens, a final layer norm and a linear layer. Padding never reaches a real
    token's attention or the mean, so a sequence gets the same logits alone or padded in a batch."""

    def __init__(self, *, vocab_size: int, num_classes: int, max_length: int, dim: int = 64, heads: int = 4,
                 layers: int = 2, ff_dim: int = 128, dropout: float = 0.1):
        super().__init__()
        self.scale = math.sqrt(dim)
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.positions = nn.Embedding(max_length, dim)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=ff_dim, dropout=dropout, batch_first=True,
                                           norm_first=True, activation="gelu")
        # no nested tensors: their fast path is inference-only and pads outputs differently from training
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        tokens = tokens.long()
        if tokens.shape[1] > self.positions.num_embeddings:
            raise ValueError(f"sequences of {tokens.shape[1]} tokens; the model was built for at most "
                             f"{self.positions.num_embeddings}")
        real = real_tokens(tokens, lengths)
        x = self.embedding(tokens) * self.scale + self.positions.weight[:tokens.shape[1]]
        x = self.encoder(self.dropout(x), src_key_padding_mask=~real)
        pooled = (x * real[..., None]).sum(1) / real.sum(1).clamp(min=1)[:, None]
        return self.head(self.dropout(self.norm(pooled)))


def resolve_model_name(name: str, kind: str) -> str:
    return DEFAULT_MODEL.get(kind, "") if name == "auto" else name


def is_import_path(name: str) -> bool:
    return IMPORT_PATH.fullmatch(name) is not None


def import_object(path: str, *, key: str) -> Callable[..., Any]:
    """The object ``package.module:name`` (``name`` may be dotted: ``module:Class.create``) names; a ConfigError
    naming ``key`` and the import's own error when it cannot be found."""
    module_name, _, attribute = path.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - ImportError, or whatever the module raises as it is imported
        raise ConfigError(f"config key {key}: cannot import {module_name} for {path} ({type(exc).__name__}: {exc}); "
                          "it must be importable by every process that builds the model: installed, or on "
                          "PYTHONPATH (with --launcher spark or predict: shipped with --py-files)") from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ConfigError(f"config key {key}: module {module_name} has no {attribute} (from {path})")
        target = getattr(target, part)
    if not callable(target):
        raise ConfigError(f"config key {key}: {path} is {type(target).__name__}, not a function or class")
    return target


def build_model(name: str, *, dataset: DatasetSpec, config) -> nn.Module:
    """The model ``name`` (or the one the dataset's ``kind`` calls for when ``auto``; or a user's factory,
    ``package.module:factory``) for a dataset."""
    kind = dataset.kind
    name = resolve_model_name(name, kind)
    if is_import_path(name):
        factory = import_object(name, key="train.model (--model)")
        try:
            model = factory(dataset, dict(config.model_config))
        except Exception as exc:  # noqa: BLE001 - the user's code: any error, said in one line with the contract
            raise ConfigError(f"config key train.model (--model): {name}(dataset, model_config) raised "
                              f"{type(exc).__name__}: {exc}; a model factory is called with the dataset's "
                              f"description (a DatasetSpec: kind {kind!r}, classes, image or sequence) and the "
                              "train.model_config mapping, and returns a torch.nn.Module") from exc
        if not isinstance(model, nn.Module):
            raise ConfigError(f"config key train.model (--model): {name}(dataset, model_config) returned "
                              f"{type(model).__name__}, not a torch.nn.Module")
        return model
    if name in SEQUENCE_MODELS:
        if kind != "sequence":
            raise ConfigError(f"config key train.model (--model): {name} needs a sequence dataset, this one is "
                              f"{with_article(kind)} dataset (use cnn, or auto)")
        sequence, classes = dataset.sequence, len(dataset.classes)
        if name == "fasttext":
            f = config.fasttext
            return BagOfEmbeddings(vocab_size=sequence.vocab_size, num_classes=classes, embed_dim=f.embed_dim,
                                   bigrams=f.bigrams, bigram_buckets=f.bigram_buckets, dropout=f.dropout)
        if name == "transformer":
            t = config.transformer
            return TransformerClassifier(vocab_size=sequence.vocab_size, num_classes=classes,
                                         max_length=sequence.max_length, dim=t.dim, heads=t.heads, layers=t.layers,
                                         ff_dim=t.ff_dim, dropout=t.dropout)
        r = config.rnn
        return RNNClassifier(cell=name, vocab_size=sequence.vocab_size,
                             num_classes=classes, embed_dim=r.embed_dim, hidden=r.hidden,
                             layers=r.layers, bidirectional=r.bidirectional, dropout=r.dropout)
    if name == "cnn":
        if kind != "image":
            raise ConfigError(f"config key train.model (--model): cnn needs an image dataset, this one is "
                              f"{with_article(kind)} dataset (use {', '.join(SEQUENCE_MODELS)}, or auto)")
        image = dataset.image
        return CNN(in_channels=image.channels, image_size=image.size, num_classes=len(dataset.classes),
                   conv_channels=tuple(config.cnn.conv_channels), hidden=config.cnn.hidden, dropout=config.cnn.dropout)
    raise ValueError(f"no model {name!r} for a dataset of kind {kind!r}")


def default_optimizer(name: str) -> tuple[str, float, float]:
    """(optimizer, learning rate per rank, weight decay) of the resolved model ``name``, where the config leaves them
    to it."""
    return CUSTOM_OPTIMIZER if is_import_path(name) else DEFAULT_OPTIMIZER[name]


def loss_function(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``train.loss``: cross entropy, or a user's ``package.module:function`` taking (logits, labels) and returning
    one loss per row (the trainer averages them, and leaves the rows padding a short shard out of its metrics)."""
    if name == "cross_entropy":
        return _cross_entropy
    function = import_object(name, key="train.loss")

    def checked(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        losses = function(logits, labels)
        if not isinstance(losses, torch.Tensor) or losses.shape != labels.shape:
            raise ConfigError(f"config key train.loss: {name}(logits, labels) must return one loss per row, a tensor "
                              f"of shape {tuple(labels.shape)}; got "
                              f"{tuple(losses.shape) if isinstance(losses, torch.Tensor) else type(losses).__name__}")
        return losses

    return checked


def collate_function(name: str | None) -> Callable[[tuple], tuple] | None:
    """``train.collate``: None, or a user's ``package.module:function`` that takes a batch's inputs as bigtrain
    collates them (a tuple of tensors on the host) and returns the model's inputs (a tuple of tensors, or one)."""
    if name is None:
        return None
    function = import_object(name, key="train.collate")

    def checked(inputs: tuple) -> tuple:
        out = function(inputs)
        out = (out,) if isinstance(out, torch.Tensor) else tuple(out)
        if not all(isinstance(t, torch.Tensor) for t in out):
            raise ConfigError(f"config key train.collate: {name}(inputs) must return a tensor or a tuple of tensors, "
                              f"got {', '.join(type(t).__name__ for t in out)}")
        return out

    return checked


class Collated(nn.Module):
    """A trained model with its ``train.collate``: called with bigtrain's batch inputs, as in training (what
    ``training.checkpoint.load_model`` returns for a run with a collate function; the model itself is ``.model``)."""

    def __init__(self, model: nn.Module, collate: Callable[[tuple], tuple]):
        super().__init__()
        self.model, self.collate = model, collate

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        first = next(self.model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
        return self.model(*(t.to(device) for t in self.collate(inputs)))


def _cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits, labels, reduction="none")
