"""The interfaces every family and objective implements, their capabilities and outputs.

These classes hold declarations only. Shared behaviour lives in
:mod:`unimodel.nn` (blocks), :mod:`unimodel.model` (composition) and
:mod:`unimodel.generation`; the interface is not a vehicle for code reuse.

The interfaces are generic in their config class: ``class GPTDecoder(Decoder[GPTConfig])``
makes ``self.config`` a ``GPTConfig`` for type checkers, and an override of
``build_backbone(cls, config: GPTConfig)`` matches the base signature.

Shapes: B batch, T target length, S source length, D model width, V vocabulary.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar, runtime_checkable

from torch import Tensor, nn

from unimodel.capabilities import Cap as Cap  # re-exported: the names predate unimodel.capabilities
from unimodel.config import Config

if TYPE_CHECKING:
    import torch

    from unimodel.data.tokenizer import Tokenizer
    from unimodel.model import Model
    from unimodel.nn.attention import KVCache

ConfigT = TypeVar("ConfigT", bound=Config)
"""The config class a component is generic in."""


# ------------------------------------------------------------------ outputs
@dataclass
class EncoderOutput:
    last_hidden_state: Tensor  # (B, S, D)
    pooler_output: Tensor | None = None  # (B, D)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class DecoderOutput:
    last_hidden_state: Tensor  # (B, T, D)
    cache: KVCache | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelOutput:
    """What :class:`unimodel.Model` returns; names follow Hugging Face."""

    logits: Tensor | None  # (B, T, V) for LM heads; (B, C) for sequence classification
    last_hidden_state: Tensor  # (B, T, D): the decoder's states, or the encoder's
    loss: Tensor | None = None
    past_key_values: KVCache | None = None
    encoder_last_hidden_state: Tensor | None = None  # (B, S, D)
    pooler_output: Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    n_correct: Tensor | None = None  # with return_logits=False: predictions whose argmax is the label

    def __getitem__(self, key: str) -> Any:
        """``out["logits"]``; a family-specific output (``out["codes"]``) is looked up in ``extra``."""
        if key in self.__dataclass_fields__:
            return getattr(self, key)
        try:
            return self.extra[key]
        except KeyError:
            raise KeyError(f"model output has no {key!r}; it has {', '.join(self._keys())}") from None

    def _keys(self) -> list[str]:
        return [*self.__dataclass_fields__, *self.extra]


@dataclass
class ObjectiveOutput:
    loss: Tensor  # scalar, mean over predicted positions
    n_predictions: int  # positions that contributed to the loss
    logits: Tensor | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    # what the model returned for the next step, such as extra["mems"], which a recurrent data kind carries
    state: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TokenLoss:
    """An objective whose loss is the mean cross-entropy of the LM head's logits against
    per-position labels (-100 ignored) declares it so, and the model can compute that loss
    without forming the logits (``Model.forward(..., return_logits=False)``).

    ``shift``: logits at position t predict the label at t + 1 (causal LM).
    """

    shift: bool = False
    label_smoothing: float = 0.0


# ------------------------------------------------------------------ backbones
class Encoder(nn.Module, ABC, Generic[ConfigT]):
    """Bidirectional: inputs (B, S) ids, or continuous data, -> hidden states (B, S, D).

    Subclasses set ``config_class`` and take their config (kept as ``self.config``)
    as the only constructor argument; ``d_model``, ``vocab_size`` and
    ``max_positions`` (``None`` when unbounded) are instance attributes.
    ``forward`` may declare fewer keyword arguments than below: the model passes
    only those it declares (docs/plugins.md).
    """

    # set on the class; a ClassVar cannot name the type variable
    config_class: type[ConfigT]
    config: ConfigT
    provides: frozenset[str] = frozenset()
    d_model: int
    vocab_size: int
    max_positions: int | None

    @abstractmethod
    def forward(
        self,
        input_ids: Tensor,
        *,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
    ) -> EncoderOutput: ...

    @abstractmethod
    def get_input_embeddings(self) -> nn.Embedding: ...

    @abstractmethod
    def build_lm_head(self) -> nn.Module:
        """This family's output layer for token prediction (tied where the family ties)."""


class Decoder(nn.Module, ABC, Generic[ConfigT]):
    """Target-side states, optionally attending to an encoder memory.

    ``is_causal`` says whether position t sees only positions <= t. A decoder
    that provides ``kv_cache`` decodes incrementally: :meth:`new_cache` gives a
    cache that :meth:`forward` fills and reads, one or more positions per call.
    ``cross_attention`` is true when the decoder reads a memory; a decoder
    built with ``memory_dim`` set gains cross-attention layers when it is
    paired with an encoder. ``forward`` may declare fewer keyword arguments
    than below: the model passes only those it declares (docs/plugins.md).
    A non-causal decoder that provides ``output_positions`` also takes
    ``output_positions`` (B, K) and returns the hidden states of those positions
    alone, (B, K, D), running its last layer on those K rows only (mask-predict
    and parallel sampling read only the positions they predict); it checks the
    argument with :meth:`output_queries`.
    """

    config_class: type[ConfigT]
    config: ConfigT
    provides: frozenset[str] = frozenset()
    is_causal: bool
    cross_attention: bool
    d_model: int
    vocab_size: int
    max_positions: int | None

    @abstractmethod
    def forward(
        self,
        input_ids: Tensor,
        *,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        memory: Tensor | None = None,
        memory_mask: Tensor | None = None,
        cache: KVCache | None = None,
    ) -> DecoderOutput:
        """input_ids (B, T); attention_mask (B, cached + T); memory (B, S, D_enc)."""

    @abstractmethod
    def get_input_embeddings(self) -> nn.Embedding: ...

    @abstractmethod
    def build_lm_head(self) -> nn.Module: ...

    def output_queries(self, output_positions: Tensor | None, batch: int, length: int) -> Tensor | None:
        """``forward``'s ``output_positions`` checked against a (``batch``, ``length``) input: None, or (B, K)
        long positions. Raises InputError when the decoder does not provide ``output_positions``."""
        if output_positions is None:
            return None
        from unimodel.errors import InputError
        from unimodel.inputs import check_output_positions

        if Cap.OUTPUT_POSITIONS not in self.provides:
            raise InputError(
                f"decoder {type(self).__name__} computes every position and does not take output_positions (it "
                "does not provide 'output_positions'; a causal decoder never does): call it without them and "
                "index its output"
            )
        return check_output_positions(output_positions, batch, length)

    def new_cache(self, batch: int, capacity: int, *, dtype: torch.dtype, device: torch.device) -> KVCache:
        """An empty cache for ``batch`` rows and about ``capacity`` positions (it must grow past them).

        Decoders that provide ``kv_cache`` override this; without one, generation
        re-runs the whole prefix at every step.
        """
        from unimodel.errors import InputError

        raise InputError(f"decoder {type(self).__name__} keeps no cache for incremental decoding (no kv_cache)")


@runtime_checkable
class CodebookPart(Protocol):
    """What an encoder or decoder providing ``codebook`` offers: it maps continuous
    inputs to a grid of discrete codes and back, so a prior can model the codes as tokens.

    ``vocab_size`` is the number of codes; ``code_shape`` the code grid (h, w),
    whose ``h * w`` positions a code sequence has (row-major).
    :meth:`unimodel.Model.encode_codes` and :meth:`~unimodel.Model.decode_codes`
    delegate to this part.
    """

    vocab_size: int
    code_shape: tuple[int, ...]

    def encode_codes(self, pixel_values: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, h*w) long codes."""
        ...

    def decode_codes(self, codes: Tensor) -> Tensor:
        """(B, h*w) long codes -> (B, C, H, W)."""
        ...


@dataclass
class Backbone:
    """What a model family builds: an optional encoder, an optional decoder, its LM head.

    ``special_tokens`` maps roles (``bos``, ``eos``, ``pad``,
    ``decoder_start``) to ids, the defaults for generation. ``decoding`` names the
    ``decoding`` component ``generate`` runs when the caller names none and asks for
    no beams (``None``: ``greedy``, or ``sample`` with ``do_sample``).
    """

    encoder: Encoder | None
    decoder: Decoder | None
    lm_head: nn.Module | None
    provides: frozenset[str]
    special_tokens: Mapping[str, int | None] = field(default_factory=dict)
    decoding: str | None = None


class ModelFamily(ABC, Generic[ConfigT]):
    """A ``model`` component: a config class and a function from config to backbone.

    A family whose capabilities depend on its config (a pairing of registered
    parts, say) also defines ``provides_for(config) -> frozenset[str]``, or
    ``provides(self)`` on its config class (read first, and without importing
    the family when its registry record names the config class); the objective
    check then uses it instead of the registry record.
    """

    config_class: type[ConfigT]

    @classmethod
    @abstractmethod
    def build_backbone(cls, config: ConfigT) -> Backbone: ...


# ------------------------------------------------------------------ objectives
class Objective(ABC, Generic[ConfigT]):
    """A pretraining or fine-tuning task: data transform, heads, loss.

    ``requires`` lists the capabilities a backbone must provide;
    ``special_tokens`` the tokenizer roles the data transform needs (``mask``,
    ``eos``, ``sentinel``...); ``primary_head`` the head whose output is the
    model's ``logits`` (``"lm"`` is the backbone's own LM head, ``None`` for
    none); ``uses_lm_head`` whether the model keeps the backbone's LM head.
    ``data_kind`` names the registered ``data`` component whose examples the
    trainer feeds ``prepare`` (:class:`unimodel.data.kinds.DataKind`): the core's
    ``"text"``, examples ``{"input_ids": block}`` cut from packed text, or
    ``"pairs"``, examples ``{"source": ids, "target": ids}`` (JSONL/TSV pair
    files, pair corpora), or a plugin's own kind. ``loss_is_token_ce``: the loss
    is a mean cross-entropy over vocabulary tokens, so its exponential is a
    perplexity (the trainer and ``unimodel eval`` print one only then). ``passes_mems``: ``forward``
    passes a batch's ``mems`` to the model, so the text kind's recurrent mode
    (``[data] recurrent_memory``, :mod:`unimodel.data.recurrent`) can train with it.

    ``model_options`` are model config values the objective needs, e.g.
    ``{"causal_decoder": False}``: :func:`~unimodel.build_model` sets each one
    on a model whose config has that field (over the preset's value, under a
    value the model spec sets itself), and checks ``requires`` against the
    capabilities of the model so configured (``provides_for(config)``).
    ``default_strategy`` names the decoding strategy ``generate`` runs for a
    model trained with this objective when the call names none and neither
    samples nor searches beams (``None``: greedy).
    """

    config_class: type[ConfigT]
    requires: ClassVar[frozenset[str]] = frozenset()
    model_options: ClassVar[Mapping[str, Any]] = {}
    default_strategy: ClassVar[str | None] = None
    special_tokens: ClassVar[tuple[str, ...]] = ()
    primary_head: ClassVar[str | None] = "lm"
    uses_lm_head: ClassVar[bool] = True
    data_kind: ClassVar[str] = "text"
    passes_mems: ClassVar[bool] = False
    loss_is_token_ce: ClassVar[bool] = False

    def __init__(self, config: ConfigT) -> None:
        self.config = config

    @abstractmethod
    def build_heads(self, backbone: Backbone) -> dict[str, nn.Module]:
        """Task heads beyond the backbone's LM head (``{}`` when there are none)."""

    @abstractmethod
    def prepare(
        self,
        examples: Sequence[Mapping[str, Sequence[int]]],
        *,
        tokenizer: Tokenizer | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """Turn tokenized examples into a model batch: noise, masks, labels, padding."""

    @abstractmethod
    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Mean loss of ``logits`` against ``labels`` (-100 ignored)."""

    @abstractmethod
    def forward(self, model: Model, batch: Mapping[str, Tensor]) -> ObjectiveOutput: ...

    def token_loss(self) -> TokenLoss | None:
        """The loss as a token cross-entropy on the LM head, or ``None`` when it is something else."""
        return None

    def count_targets(self, batch: Mapping[str, Tensor]) -> int:
        """The predictions the loss of ``batch`` (what :meth:`prepare` returned) averages over, known
        before the forward pass: the ``n_predictions`` that :meth:`forward` reports for it.

        The trainer weights micro-batches and processes by this count, so the loss of a global batch
        is the mean over all its predictions however it is split. Default: ``batch["labels"]``
        entries other than -100 (shifted by one position when :meth:`token_loss` says so); every
        entry of float labels (regression). Override when the loss averages over something else.
        """
        labels = batch.get("labels")
        if labels is None:
            raise NotImplementedError(
                f"{type(self).__name__}.count_targets: the batch has no 'labels'; the objective must say how many "
                "predictions its loss averages over"
            )
        spec = self.token_loss()
        if spec is not None and spec.shift and labels.dim() > 1:
            labels = labels[:, 1:]
        if labels.is_floating_point():
            return labels.numel()
        return int((labels != -100).sum())  # -100: unimodel.nn.losses.IGNORE_INDEX, ignored positions

    def __call__(self, model: Model, batch: Mapping[str, Tensor]) -> ObjectiveOutput:
        return self.forward(model, batch)
