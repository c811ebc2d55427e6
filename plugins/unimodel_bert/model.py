"""BERT: a post-LN bidirectional encoder with learned positions, token types, a pooler and an MLM head."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from unimodel.errors import InputError
from unimodel.interfaces import Backbone, Encoder, EncoderOutput, ModelFamily
from unimodel.nn import Block, LearnedPositions, LMHead, attention_mask_for, init_normal_
from unimodel_bert import PROVIDES
from unimodel_bert.config import BertConfig


class BertEncoder(Encoder[BertConfig]):
    """Token ids (B, S) (+ token types (B, S)) -> hidden states (B, S, D) and pooled (B, D).

    Embeddings are ``LayerNorm(word + token_type + position)`` then dropout;
    each block is post-LN: ``LN(x + attn(x))``, ``LN(x + ffn(x))``.
    """

    config_class = BertConfig
    provides = PROVIDES

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        c = config
        self.config = c
        self.d_model, self.vocab_size, self.max_positions = c.d_model, c.vocab_size, c.max_positions
        self.embed_tokens = nn.Embedding(c.vocab_size, c.d_model, padding_idx=c.pad_token_id)
        self.embed_positions = LearnedPositions(c.max_positions, c.d_model)
        self.embed_types = nn.Embedding(c.type_vocab_size, c.d_model)
        self.embed_norm = nn.LayerNorm(c.d_model, eps=c.layer_norm_eps)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(
            Block(
                d_model=c.d_model,
                n_heads=c.n_heads,
                d_ff=c.d_ff or 4 * c.d_model,
                norm_eps=c.layer_norm_eps,
                prenorm=False,
                activation=c.activation,
                dropout=c.dropout,
                attn_dropout=c.attn_dropout,
            )
            for _ in range(c.n_layers)
        )
        self.pooler = nn.Linear(c.d_model, c.d_model) if c.add_pooler else None
        init_normal_(self, std=c.init_std)
        if c.pad_token_id is not None:
            with torch.no_grad():
                self.embed_tokens.weight[c.pad_token_id].zero_()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def build_lm_head(self) -> nn.Module:
        """BERT's prediction head: dense -> activation -> LayerNorm -> (tied) projection + bias."""
        c = self.config
        head = LMHead(
            d_model=c.d_model,
            vocab_size=c.vocab_size,
            embedding=self.embed_tokens if c.tie_embeddings else None,
            bias=True,
            transform=c.activation,
            transform_eps=c.layer_norm_eps,
        )
        assert head.dense is not None
        init_normal_(head.dense, std=c.init_std)
        if not c.tie_embeddings:
            nn.init.normal_(head.weight, std=c.init_std)
        return head

    def embed(self, input_ids: Tensor, token_type_ids: Tensor | None, position_ids: Tensor | None) -> Tensor:
        """(B, S) ids -> normalised embeddings (B, S, D)."""
        _B, S = input_ids.shape
        if position_ids is None:
            position_ids = torch.arange(S, device=input_ids.device)
        if token_type_ids is None:
            types = self.embed_types.weight[0]  # every token is segment A
        else:
            n = self.embed_types.num_embeddings
            if token_type_ids.shape != input_ids.shape:
                raise InputError(
                    f"token_type_ids has shape {tuple(token_type_ids.shape)} but input_ids {tuple(input_ids.shape)}"
                )
            if int(token_type_ids.min()) < 0 or int(token_type_ids.max()) >= n:
                raise InputError(
                    f"token_type_ids must lie in 0..{n - 1} (type_vocab_size={n}), "
                    f"got values {int(token_type_ids.min())}..{int(token_type_ids.max())}"
                )
            types = self.embed_types(token_type_ids)
        x = self.embed_tokens(input_ids) + types + self.embed_positions(position_ids)
        return self.drop(self.embed_norm(x))

    def forward(
        self,
        input_ids: Tensor,
        *,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        pool: bool = True,
    ) -> EncoderOutput:
        """input_ids (B, S); attention_mask (B, S) 1 = token, 0 = padding; token_type_ids (B, S).

        ``pool``: compute the pooled vector (the model passes false when its loss does not read it, so
        the pooler's parameters are not left without a gradient under data parallelism).
        """
        S = input_ids.shape[1]
        x = self.embed(input_ids, token_type_ids, position_ids)  # (B, S, D)
        mask, _ = attention_mask_for(key_mask=attention_mask, q_len=S, k_len=S, causal=False, device=input_ids.device)
        for block in self.blocks:
            x = block(x, mask=mask)
        pooled = torch.tanh(self.pooler(x[:, 0])) if self.pooler is not None and pool else None  # (B, D)
        return EncoderOutput(last_hidden_state=x, pooler_output=pooled)


class Bert(ModelFamily[BertConfig]):
    """The BERT family: an encoder-only backbone with BERT's MLM prediction head."""

    config_class = BertConfig

    @classmethod
    def provides_for(cls, config: BertConfig) -> frozenset[str]:
        return config.provides()

    @classmethod
    def build_backbone(cls, config: BertConfig) -> Backbone:
        encoder = BertEncoder(config)
        provides = cls.provides_for(config)
        return Backbone(
            encoder=encoder,
            decoder=None,
            lm_head=encoder.build_lm_head(),
            provides=provides,
            special_tokens={"pad": config.pad_token_id},
        )
