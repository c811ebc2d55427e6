"""Pieces objectives share: padding, language-model losses, accuracy."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from unimodel.builtin import SEQ2SEQ_REQUIRES
from unimodel.builtin_configs import FeaturesConfig, Seq2SeqConfig
from unimodel.errors import ConfigError, DataError, TrainingError
from unimodel.interfaces import Backbone, ConfigT, Objective, ObjectiveOutput, TokenLoss
from unimodel.nn.losses import IGNORE_INDEX

if TYPE_CHECKING:
    from torch import nn

    from unimodel.data.tokenizer import Tokenizer
    from unimodel.model import Model

Examples = Sequence[Mapping[str, Sequence[int]]]


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


def frame(
    ids: Sequence[int], tokenizer: Tokenizer | None, *, add_bos: bool, add_eos: bool, limit: int | None = None
) -> list[int]:
    """``[bos] ids [eos]`` with the tokenizer's tokens (each only when asked and the tokenizer has it),
    cut to at most ``limit`` tokens with the eos kept."""
    out = list(ids)
    if tokenizer is not None and add_bos and tokenizer.has_role("bos"):
        out = [tokenizer.special_id("bos"), *out]
    eos = tokenizer.special_id("eos") if tokenizer is not None and add_eos and tokenizer.has_role("eos") else None
    if limit is not None:
        out = out[: max(limit - (eos is not None), 0)]
    if eos is not None:
        out.append(eos)
    return out


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


def token_objective_step(
    objective: Objective[ConfigT],
    model: Model,
    inputs: Mapping[str, Tensor | None],
    labels: Tensor,
    *,
    logits_at: Tensor | None = None,
) -> ObjectiveOutput:
    """The training step of an objective whose loss is a token cross-entropy (it declares
    :meth:`~unimodel.interfaces.Objective.token_loss`): the model computes the loss
    without forming the logits, and the accuracy in the same pass.

    ``logits_at`` (B, T) bool restricts the predictions to those positions (masked LM).
    """
    spec = objective.token_loss()
    assert spec is not None, f"{type(objective).__name__} declares no token_loss"
    out = model(**inputs, labels=labels, logits_at=logits_at, return_logits=False)
    targets, shift = (labels[logits_at], False) if logits_at is not None else (labels, spec.shift)
    n = count_targets(targets, shift=shift)
    if out.n_correct is not None:
        accuracy = float(out.n_correct) / n if n else 0.0
    else:  # a head without the fused loss: the model returned logits
        accuracy = token_accuracy(out.logits, targets, shift=shift)
    state = {"mems": out.extra["mems"]} if "mems" in out.extra else {}
    return ObjectiveOutput(
        loss=out.loss, n_predictions=n, logits=out.logits, metrics={"accuracy": accuracy}, state=state
    )


class TokenLossObjective(Objective[ConfigT]):
    """An objective whose loss is a token cross-entropy on the LM head. It states the loss once,
    in :meth:`token_loss`; :meth:`loss` on logits follows from it, so the two paths cannot disagree."""

    loss_is_token_ce = True

    @abstractmethod
    def token_loss(self) -> TokenLoss: ...

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        spec = self.token_loss()
        return lm_loss(logits, labels, shift=spec.shift, label_smoothing=spec.label_smoothing)


class Features(Objective[FeaturesConfig]):
    """No task head and no loss: the model returns hidden states (feature extraction).

    What a backbone-only checkpoint (a Hugging Face ``BertModel`` folder, say)
    loads as. Pick a training objective to train it.
    """

    config_class = FeaturesConfig
    primary_head = None
    uses_lm_head = False

    def build_heads(self, backbone: Backbone) -> dict[str, nn.Module]:
        return {}

    def prepare(
        self, examples: Examples, *, tokenizer: Tokenizer | None = None, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        pad = tokenizer.pad_id if tokenizer is not None else 0
        ids, mask = pad_sequences([ex["input_ids"] for ex in examples], pad)
        return {"input_ids": ids, "attention_mask": mask}

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        raise TrainingError("objective 'features' has no loss; build the model with a training objective")

    def forward(self, model: Model, batch: Mapping[str, Tensor]) -> ObjectiveOutput:
        raise TrainingError("objective 'features' has no loss; build the model with a training objective")


class Seq2Seq(TokenLossObjective[Seq2SeqConfig]):
    """Supervised sequence-to-sequence: the decoder learns the target given the source.

    ``prepare`` takes examples ``{"source": ids, "target": ids}``; labels are the
    framed target (padding -100); the decoder input is the labels shifted right
    behind the model's decoder start token.
    """

    config_class = Seq2SeqConfig
    requires = SEQ2SEQ_REQUIRES
    data_kind = "pairs"

    def build_heads(self, backbone: Backbone) -> dict[str, nn.Module]:
        return {}

    def _frame(self, ids: Sequence[int], tokenizer: Tokenizer | None, limit: int | None) -> list[int]:
        return frame(ids, tokenizer, add_bos=self.config.add_bos, add_eos=self.config.add_eos, limit=limit)

    def prepare(
        self, examples: Examples, *, tokenizer: Tokenizer | None = None, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        for i, ex in enumerate(examples):
            for side in ("source", "target"):
                if ex.get(side) is None:
                    raise DataError(
                        f"seq2seq example {i} has no {side!r} (keys: {', '.join(ex) or 'none'}); seq2seq data needs "
                        "source/target pairs (a pair corpus such as numbers, JSONL with source and target fields, "
                        "or TSV)"
                    )
        c = self.config
        if (
            c.add_bos
            and tokenizer is not None
            and tokenizer.has_role("bos")
            and tokenizer.has_role("eos")
            and tokenizer.special_id("bos") == tokenizer.special_id("eos")
        ):
            raise ConfigError(
                f"objective 'seq2seq': add_bos = true, but the tokenizer's bos and eos are one token "
                f"({tokenizer.roles['bos']!r}), so every target would start with its own end and generation would "
                "stop at once; set objective.add_bos = false, or use a tokenizer whose bos differs from its eos"
            )
        pad = tokenizer.pad_id if tokenizer is not None else 0
        src = [self._frame(ex["source"], tokenizer, c.max_source_length) for ex in examples]
        tgt = [self._frame(ex["target"], tokenizer, c.max_target_length) for ex in examples]
        ids, mask = pad_sequences(src, pad)
        labels, lmask = pad_sequences(tgt, pad)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels.masked_fill(lmask == 0, IGNORE_INDEX)}

    def token_loss(self) -> TokenLoss:
        return TokenLoss(label_smoothing=self.config.label_smoothing)

    def forward(self, model: Model, batch: Mapping[str, Tensor]) -> ObjectiveOutput:
        if "labels" not in batch:
            raise DataError("a seq2seq batch needs 'labels' (the targets); build it with objective.prepare")
        inputs = {k: batch.get(k) for k in ("input_ids", "attention_mask", "decoder_input_ids")}
        return token_objective_step(self, model, inputs, batch["labels"])
