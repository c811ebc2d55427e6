"""Pieces objectives share: padding, language-model losses, accuracy."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from unimodel.config import Config
from unimodel.errors import DataError, TrainingError
from unimodel.interfaces import Objective, ObjectiveOutput

IGNORE_INDEX = -100


def pad_sequences(
    seqs: Sequence[Sequence[int]], pad_id: int, *, side: str = "right", length: int | None = None
) -> tuple[Tensor, Tensor]:
    """Lists of ids -> (ids (B, T), attention_mask (B, T)), padded to the longest (or ``length``)."""
    if not seqs:
        raise DataError("cannot build a batch from zero examples")
    T = length if length is not None else max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        s = list(s)[:T]
        n = len(s)
        if n == 0:
            continue
        if side == "right":
            ids[i, :n] = torch.tensor(s, dtype=torch.long)
            mask[i, :n] = 1
        else:
            ids[i, T - n :] = torch.tensor(s, dtype=torch.long)
            mask[i, T - n :] = 1
    return ids, mask


def lm_loss(logits: Tensor, labels: Tensor, *, shift: bool, label_smoothing: float = 0.0) -> Tensor:
    """Mean token cross-entropy; ``shift`` makes logits[t] predict labels[t+1] (causal LM).

    logits (B, T, V) or (N, V); labels (B, T) or (N,), -100 ignored. Computed in fp32.
    """
    if shift:
        logits, labels = logits[:, :-1], labels[:, 1:]
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        label_smoothing=label_smoothing,
    )


def count_targets(labels: Tensor, *, shift: bool) -> int:
    if shift:
        labels = labels[:, 1:]
    return int((labels != IGNORE_INDEX).sum())


@torch.no_grad()
def token_accuracy(logits: Tensor, labels: Tensor, *, shift: bool) -> float:
    if shift:
        logits, labels = logits[:, :-1], labels[:, 1:]
    keep = labels != IGNORE_INDEX
    n = int(keep.sum())
    if n == 0:
        return 0.0
    return float((logits.argmax(-1)[keep] == labels[keep]).float().mean())


@dataclass(frozen=True)
class FeaturesConfig(Config):
    section = "objective 'features'"


class Features(Objective):
    """No task head and no loss: the model returns hidden states (feature extraction).

    What a backbone-only checkpoint (a Hugging Face ``BertModel`` folder, say)
    loads as. Pick a training objective to train it.
    """

    config_class = FeaturesConfig
    primary_head = None
    uses_lm_head = False

    def build_heads(self, backbone):
        return {}

    def prepare(self, examples, *, tokenizer=None, generator=None):
        pad = tokenizer.pad_id if tokenizer is not None else 0
        ids, mask = pad_sequences([ex["input_ids"] for ex in examples], pad)
        return {"input_ids": ids, "attention_mask": mask}

    def loss(self, logits, labels):
        raise TrainingError("objective 'features' has no loss; build the model with a training objective")

    def forward(self, model, batch: Mapping[str, Tensor]) -> ObjectiveOutput:
        raise TrainingError("objective 'features' has no loss; build the model with a training objective")
