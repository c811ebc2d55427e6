"""Objectives for encoders: masked language modelling, sequence and token classification.

``mlm`` needs an encoder with an LM head; ``classify`` reads the pooled vector;
``tag`` labels every position. Each builds its own head, so one backbone
config trains with any of them by changing the objective name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unimodel.errors import ConfigError, DataError
from unimodel.interfaces import Backbone, Objective, ObjectiveOutput, TokenLoss
from unimodel.nn.sync import mask_is_trivial
from unimodel.objectives import (
    IGNORE_INDEX,
    TokenLossObjective,
    count_targets,
    lm_loss,
    pad_sequences,
    token_accuracy,
    token_objective_step,
)
from unimodel_bert import CLASSIFY_REQUIRES, MLM_REQUIRES, TAG_REQUIRES
from unimodel_bert.config import ClassifyConfig, MLMConfig, TagConfig

if TYPE_CHECKING:
    from unimodel.data.tokenizer import Tokenizer
    from unimodel.model import Model


# ------------------------------------------------------------------ inputs
def build_inputs(
    a: Sequence[int], b: Sequence[int] | None = None, *, cls_id: int, sep_id: int
) -> tuple[list[int], list[int]]:
    """BERT's input convention: ``[CLS] A [SEP]`` or ``[CLS] A [SEP] B [SEP]``.

    Returns (input_ids, token_type_ids); types are 0 up to the first ``[SEP]``
    included and 1 for ``B [SEP]``.
    """
    ids = [cls_id, *a, sep_id]
    types = [0] * len(ids)
    if b is not None:
        ids += [*b, sep_id]
        types += [1] * (len(b) + 1)
    return ids, types


def _role_or(value: int | None, role: str, tokenizer: Any, objective: str, field: str) -> int:
    if value is not None:
        return value
    if tokenizer is None:
        raise ConfigError(f"objective {objective!r} needs a tokenizer with a {role!r} token, or {field} set")
    return tokenizer.special_id(role)


def _pad_id(value: int | None, tokenizer: Any) -> int:
    if value is not None:
        return value
    return tokenizer.pad_id if tokenizer is not None else 0


def _token_types(examples: Sequence[Mapping[str, Any]], length: int) -> Tensor | None:
    """(B, T) token types padded with 0, or None when no example carries them."""
    if not any("token_type_ids" in ex for ex in examples):
        return None
    types, _ = pad_sequences([ex.get("token_type_ids", ()) for ex in examples], 0, length=length)
    return types


def _model_inputs(batch: Mapping[str, Tensor]) -> dict[str, Tensor | None]:
    mask = batch.get("attention_mask")
    if mask is not None and mask_is_trivial(mask):
        mask = None  # no padding: skip building an attention mask
    inputs: dict[str, Tensor | None] = {"input_ids": batch["input_ids"], "attention_mask": mask}
    if "token_type_ids" in batch:
        inputs["token_type_ids"] = batch["token_type_ids"]
    return inputs


# ------------------------------------------------------------------ mlm


class MaskedLM(TokenLossObjective[MLMConfig]):
    """BERT's masked language modelling.

    A fraction ``mlm_probability`` of the non-special tokens (or of the words,
    with ``whole_word``) is selected; of those tokens 80% become ``[MASK]``, 10%
    a random token and 10% stay, and only they carry a label (others -100).
    Role tokens of the tokenizer (cls, sep, pad, mask ...; not unk) and padding
    are never selected. Examples are already-packed blocks ``{"input_ids": [...]}``
    (optionally ``"token_type_ids"``).
    """

    config_class = MLMConfig
    requires = MLM_REQUIRES
    special_tokens = ("mask",)

    def __init__(self, config: MLMConfig) -> None:
        super().__init__(config)
        self._vocab_cache: tuple[Any, Tensor, Tensor] | None = None  # (tokenizer, is_special, is_continuation)

    def build_heads(self, backbone: Backbone) -> dict[str, nn.Module]:
        return {}

    def _vocab_tables(self, tokenizer: Any, vocab_size: int) -> tuple[Tensor, Tensor]:
        """(is_special (V,), is_continuation (V,)) boolean lookup tables."""
        if (
            self._vocab_cache is not None
            and self._vocab_cache[0] is tokenizer
            and len(self._vocab_cache[1]) == vocab_size
        ):
            return self._vocab_cache[1], self._vocab_cache[2]
        c = self.config
        special = torch.zeros(vocab_size, dtype=torch.bool)
        ids = set(c.special_token_ids)
        if tokenizer is not None:
            ids |= {tokenizer.special_id(r) for r in tokenizer.roles if r != "unk"}
        for i in (c.mask_token_id, c.pad_token_id):
            if i is not None:
                ids.add(i)
        special[[i for i in ids if 0 <= i < vocab_size]] = True
        cont = torch.zeros(vocab_size, dtype=torch.bool)
        if c.whole_word:
            if tokenizer is None:
                raise ConfigError("objective 'mlm' with whole_word=true needs a tokenizer to find '##' pieces")
            prefix = c.continuation_prefix
            for i in range(min(vocab_size, tokenizer.vocab_size)):
                tok = tokenizer.id_to_token(i)
                cont[i] = tok is not None and tok.startswith(prefix) and len(tok) > len(prefix)
        self._vocab_cache = (tokenizer, special, cont)
        return special, cont

    def select(
        self,
        ids: Tensor,
        attention_mask: Tensor,
        *,
        tokenizer: Any = None,
        generator: torch.Generator | None = None,
        vocab_size: int | None = None,
    ) -> Tensor:
        """Which positions of ``ids`` (B, T) are predicted: a bool (B, T).

        Whole-word selection draws once per word (a non-special token and the
        continuation pieces that follow it) and marks all its pieces.
        """
        c = self.config
        B, T = ids.shape
        V = vocab_size or max(int(ids.max()) + 1, 1)
        special, cont = self._vocab_tables(tokenizer, V)
        safe = ids.clamp(0, V - 1)
        candidate = attention_mask.bool() & ~special[safe] & (ids < V)
        if c.whole_word:
            is_cont = cont[safe] & candidate
            prev_candidate = F.pad(candidate[:, :-1], (1, 0), value=False)
            start = candidate & ~(is_cont & prev_candidate)  # a piece after a special starts its own word
        else:
            start = candidate
        chosen = start & (torch.rand(B, T, generator=generator) < c.mlm_probability)
        deficit = (c.min_predictions - chosen.sum(1)).clamp(min=0)
        for b in deficit.nonzero().flatten().tolist():
            free = start[b] & ~chosen[b]
            k = min(int(deficit[b]), int(free.sum()))
            if k:
                score = torch.rand(T, generator=generator).masked_fill(~free, -1.0)
                chosen[b, score.topk(k).indices] = True
        # each token follows the draw made at the start of its word
        pos = torch.arange(T).expand(B, T)
        word_start = torch.where(start, pos, torch.full_like(pos, -1)).cummax(dim=1).values.clamp(min=0)
        return candidate & chosen.gather(1, word_start)

    def prepare(
        self,
        examples: Sequence[Mapping[str, Any]],
        *,
        tokenizer: Tokenizer | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        c = self.config
        mask_id = _role_or(c.mask_token_id, "mask", tokenizer, "mlm", "mask_token_id")
        vocab = c.vocab_size if c.vocab_size is not None else (tokenizer.vocab_size if tokenizer is not None else None)
        if vocab is None:
            raise ConfigError("objective 'mlm' needs a tokenizer, or vocab_size set, to draw random replacement tokens")
        ids, attn = pad_sequences([ex["input_ids"] for ex in examples], _pad_id(c.pad_token_id, tokenizer))
        if int(ids.max()) >= vocab:
            raise DataError(f"objective 'mlm': token id {int(ids.max())} is outside the vocabulary of {vocab}")
        selected = self.select(ids, attn, tokenizer=tokenizer, generator=generator, vocab_size=vocab)
        special, _ = self._vocab_tables(tokenizer, vocab)
        pool = (~special).nonzero().flatten()  # random replacements are ordinary tokens
        if len(pool) == 0:
            raise ConfigError(f"objective 'mlm': every id below vocab_size={vocab} is special; nothing to draw from")
        r = torch.rand(ids.shape, generator=generator)
        to_mask = selected & (r < c.mask_replace_prob)
        to_random = selected & ~to_mask & (r < c.mask_replace_prob + c.random_replace_prob)
        random_ids = pool[torch.randint(len(pool), ids.shape, generator=generator)]
        inputs = torch.where(to_mask, torch.full_like(ids, mask_id), torch.where(to_random, random_ids, ids))
        batch = {"input_ids": inputs, "attention_mask": attn, "labels": ids.masked_fill(~selected, IGNORE_INDEX)}
        types = _token_types(examples, ids.shape[1])
        if types is not None:
            batch["token_type_ids"] = types
        return batch

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        if not bool((labels != IGNORE_INDEX).any()):
            return logits.sum() * 0.0  # nothing to predict: a zero that keeps the graph
        return super().loss(logits, labels)

    def token_loss(self) -> TokenLoss:
        return TokenLoss()

    def forward(self, model: Model, batch: Mapping[str, Tensor]) -> ObjectiveOutput:
        """Loss at the selected positions only: the MLM head (transform and vocabulary
        projection) runs on those rows, not on every token, and the loss is computed
        without forming their logits."""
        labels = batch["labels"]
        return token_objective_step(self, model, _model_inputs(batch), labels, logits_at=labels != IGNORE_INDEX)


# ------------------------------------------------------------------ heads
class TokenClassificationHead(nn.Module):
    """Dropout then a linear layer: (..., D) -> (..., num_labels)."""

    pooled_input = False  # Model.forward passes hidden states (B, T, D)

    def __init__(self, *, d_model: int, num_labels: int, dropout: float = 0.1, init_std: float = 0.02) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(d_model, num_labels)
        nn.init.normal_(self.proj.weight, std=init_std)
        nn.init.zeros_(self.proj.bias)

    def forward(self, h: Tensor) -> Tensor:
        return self.proj(self.dropout(h))


class SequenceClassificationHead(TokenClassificationHead):
    """The same layer on the pooled vector: (B, D) -> (B, num_labels)."""

    pooled_input = True  # Model.forward passes the encoder's pooler_output


# ------------------------------------------------------------------ classify / tag


def _wrap(
    examples: Sequence[Mapping[str, Any]], tokenizer: Tokenizer | None, add_special_tokens: bool, objective: str
) -> tuple[list[list[int]], list[list[int]] | None]:
    """Input ids (and token types) of each example, with BERT's special tokens when asked."""
    if not add_special_tokens:
        seqs = [list(ex["input_ids"]) for ex in examples]
        return seqs, None
    if tokenizer is None:
        raise ConfigError(
            f"objective {objective!r} with add_special_tokens=true needs a tokenizer with cls and sep tokens; "
            "pass one, or give inputs that already hold them and set add_special_tokens=false"
        )
    cls_id, sep_id = tokenizer.special_id("cls"), tokenizer.special_id("sep")
    pairs = [build_inputs(ex["input_ids"], ex.get("input_ids_b"), cls_id=cls_id, sep_id=sep_id) for ex in examples]
    return [p[0] for p in pairs], [p[1] for p in pairs]


class SequenceClassification(Objective[ClassifyConfig]):
    """Sequence classification (or regression) on the encoder's pooled vector.

    Examples: ``{"input_ids": [...], "label": int}`` (a float label when
    ``num_labels`` is 1), optionally ``"token_type_ids"``, or ``"input_ids_b"``
    for a second segment with ``add_special_tokens``.
    """

    config_class = ClassifyConfig
    requires = CLASSIFY_REQUIRES
    primary_head = "classify"
    uses_lm_head = False

    def build_heads(self, backbone: Backbone) -> dict[str, nn.Module]:
        assert backbone.encoder is not None
        c = self.config
        return {
            "classify": SequenceClassificationHead(
                d_model=backbone.encoder.d_model, num_labels=c.num_labels, dropout=c.dropout, init_std=c.init_std
            )
        }

    def prepare(
        self,
        examples: Sequence[Mapping[str, Any]],
        *,
        tokenizer: Tokenizer | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        c = self.config
        labels = []
        for i, ex in enumerate(examples):
            if "label" not in ex:
                raise DataError(f"objective 'classify': example {i} has no 'label' (keys: {', '.join(ex)})")
            y = ex["label"]
            if c.num_labels > 1 and not (isinstance(y, int) and 0 <= y < c.num_labels):
                raise DataError(
                    f"objective 'classify': example {i} has label {y!r}, expected an int in 0..{c.num_labels - 1}"
                )
            labels.append(y)
        seqs, types = _wrap(examples, tokenizer, c.add_special_tokens, "classify")
        ids, attn = pad_sequences(seqs, _pad_id(c.pad_token_id, tokenizer))
        dtype = torch.float32 if c.num_labels == 1 else torch.long
        batch = {"input_ids": ids, "attention_mask": attn, "labels": torch.tensor(labels, dtype=dtype)}
        if types is not None:
            batch["token_type_ids"], _ = pad_sequences(types, 0)
        elif (t := _token_types(examples, ids.shape[1])) is not None:
            batch["token_type_ids"] = t
        return batch

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """logits (B, C), labels (B,): cross-entropy, or MSE when C == 1."""
        if self.config.num_labels == 1:
            return F.mse_loss(logits.squeeze(-1).float(), labels.float())
        return F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX)

    def forward(self, model: Model, batch: Mapping[str, Tensor]) -> ObjectiveOutput:
        logits = model(**_model_inputs(batch)).logits  # (B, C)
        labels = batch["labels"]
        if self.config.num_labels == 1:
            metrics = {"mse": float(F.mse_loss(logits.detach().squeeze(-1).float(), labels.float()))}
        else:
            metrics = {"accuracy": token_accuracy(logits.detach(), labels, shift=False)}
        return ObjectiveOutput(
            loss=self.loss(logits, labels), n_predictions=len(labels), logits=logits, metrics=metrics
        )


class TokenClassification(Objective[TagConfig]):
    """A label for every token (NER-style tagging) from the encoder's hidden states.

    Examples: ``{"input_ids": [...], "labels": [...]}`` of equal length, -100
    for positions without a label (sub-word continuations, say).
    """

    config_class = TagConfig
    requires = TAG_REQUIRES
    primary_head = "tag"
    uses_lm_head = False

    def build_heads(self, backbone: Backbone) -> dict[str, nn.Module]:
        assert backbone.encoder is not None
        c = self.config
        return {
            "tag": TokenClassificationHead(
                d_model=backbone.encoder.d_model, num_labels=c.num_labels, dropout=c.dropout, init_std=c.init_std
            )
        }

    def prepare(
        self,
        examples: Sequence[Mapping[str, Any]],
        *,
        tokenizer: Tokenizer | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        c = self.config
        label_seqs = []
        for i, ex in enumerate(examples):
            if "labels" not in ex:
                raise DataError(f"objective 'tag': example {i} has no 'labels' (keys: {', '.join(ex)})")
            y = list(ex["labels"])
            if len(y) != len(ex["input_ids"]):
                raise DataError(f"objective 'tag': example {i} has {len(ex['input_ids'])} tokens but {len(y)} labels")
            bad = [v for v in y if v != IGNORE_INDEX and not 0 <= v < c.num_labels]
            if bad:
                raise DataError(
                    f"objective 'tag': example {i} has label {bad[0]!r}, expected 0..{c.num_labels - 1} or -100"
                )
            if c.add_special_tokens:
                y = [IGNORE_INDEX, *y, IGNORE_INDEX]
                if ex.get("input_ids_b") is not None:
                    y += [IGNORE_INDEX] * (len(ex["input_ids_b"]) + 1)
            label_seqs.append(y)
        seqs, types = _wrap(examples, tokenizer, c.add_special_tokens, "tag")
        ids, attn = pad_sequences(seqs, _pad_id(c.pad_token_id, tokenizer))
        labels, _ = pad_sequences(label_seqs, IGNORE_INDEX)
        batch = {"input_ids": ids, "attention_mask": attn, "labels": labels}
        if types is not None:
            batch["token_type_ids"], _ = pad_sequences(types, 0)
        elif (t := _token_types(examples, ids.shape[1])) is not None:
            batch["token_type_ids"] = t
        return batch

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        return lm_loss(logits, labels, shift=False)

    def forward(self, model: Model, batch: Mapping[str, Tensor]) -> ObjectiveOutput:
        logits = model(**_model_inputs(batch)).logits  # (B, T, C)
        labels = batch["labels"]
        return ObjectiveOutput(
            loss=self.loss(logits, labels),
            n_predictions=count_targets(labels, shift=False),
            logits=logits,
            metrics={"accuracy": token_accuracy(logits.detach(), labels, shift=False)},
        )
