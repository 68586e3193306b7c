"""Models. The CNN is the classic conv-pool-conv-pool-fc-fc network with its flattened size derived from the input;
the RNN classifier family (rnn, lstm, gru) embeds token ids and classifies from each sequence's last real step."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from core.errors import ConfigError
from core.logs import with_article
from dataset.manifest import DatasetSpec

RNN_CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
DEFAULT_MODEL = {"image": "cnn", "sequence": "lstm"}
# (optimizer, learning rate per rank) that train each family well on the sample data; config can override both.
# Plain SGD at 0.01 leaves the LSTM at chance on the sample texts after 8 epochs; Adam at 0.002 reaches 100%.
DEFAULT_OPTIMIZER = {"cnn": ("sgd", 0.01), "rnn": ("adam", 0.002), "lstm": ("adam", 0.002), "gru": ("adam", 0.002)}


class CNN(nn.Module):
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


def resolve_model_name(name: str, kind: str) -> str:
    return DEFAULT_MODEL.get(kind, "") if name == "auto" else name


def build_model(name: str, *, dataset: DatasetSpec, config) -> nn.Module:
    """The model ``name`` (or the one the dataset's ``kind`` calls for when ``auto``) for a dataset."""
    kind = dataset.kind
    name = resolve_model_name(name, kind)
    if name in RNN_CELLS:
        if kind != "sequence":
            raise ConfigError(f"config key train.model (--model): {name} needs a sequence dataset, this one is "
                              f"{with_article(kind)} dataset (use cnn, or auto)")
        r = config.rnn
        return RNNClassifier(cell=name, vocab_size=dataset.sequence.vocab_size,
                             num_classes=len(dataset.classes), embed_dim=r.embed_dim, hidden=r.hidden,
                             layers=r.layers, bidirectional=r.bidirectional, dropout=r.dropout)
    if name == "cnn":
        if kind != "image":
            raise ConfigError(f"config key train.model (--model): cnn needs an image dataset, this one is "
                              f"{with_article(kind)} dataset (use {', '.join(RNN_CELLS)}, or auto)")
        image = dataset.image
        return CNN(in_channels=image.channels, image_size=image.size, num_classes=len(dataset.classes),
                   conv_channels=tuple(config.cnn.conv_channels), hidden=config.cnn.hidden, dropout=config.cnn.dropout)
    raise ValueError(f"no model {name!r} for a dataset of kind {kind!r}")
