"""XLNet generation as transformers does it, with the memory kept as a key/value cache.

Each step appends a dummy token that no position may see (``perm_mask[:, :, -1] = 1``)
and predicts it with the query stream (the target mapping on the last position). As in
transformers, a step after the first feeds the last two tokens and the dummy, and the
memory drops its last two positions first (the last real token is thus recomputed
seeing the new one); ``mem_len`` and ``reuse_len`` bound the memory the same way. The
memory is held as every layer's keys and values, so a step projects only its three
new positions.

Registered as the ``xlnet_plm`` decoding component (``requires = {two_stream, lm_head}``)
and declared the XLNet family's default, so ``model.generate`` and ``unimodel generate``
use it without being told; greedy or sampled by ``do_sample``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from unimodel.errors import ConfigError
from unimodel.generation import GenerationInputs, GenerationSettings
from unimodel.generation.strategies import left_to_right
from unimodel_xlnet.attention import XLNetCache
from unimodel_xlnet.model import XLNetStack

if TYPE_CHECKING:
    from unimodel.model import Model

# tokens fed again at each step (transformers' offset): the last real token is recomputed seeing the new one
_REFED = 2


def two_stream(model: Model, inputs: GenerationInputs, settings: GenerationSettings) -> Tensor:
    """Greedy (or, with ``do_sample``, sampled) XLNet generation. Returns (B * samples, P + steps)."""
    if settings.num_beams > 1:
        raise ConfigError(
            "generate: XLNet's two-stream decoding (xlnet_plm) is greedy or sampled; beam search is not supported "
            "(pass num_beams=1)"
        )
    expand = settings.num_return_sequences if settings.do_sample else 1
    run = TwoStreamDecoder(model, inputs, capacity=settings.max_length, expand=expand)
    return left_to_right(run, settings, sample=settings.do_sample)


class TwoStreamDecoder:
    """A :class:`~unimodel.generation.incremental.Stepper` over an XLNet stack.

    Rows are the input rows, each repeated ``expand`` times. With the config's
    ``use_mems_eval`` off, every step runs the whole sequence again (as transformers
    does without memory).
    """

    def __init__(self, model: Model, inputs: GenerationInputs, *, capacity: int, expand: int = 1) -> None:
        stack = model.encoder if model.encoder is not None else model.decoder
        if not isinstance(stack, XLNetStack) or "lm" not in model.heads:
            raise ConfigError(f"model {model.name!r} is not an XLNet with an LM head; xlnet_plm cannot drive it")
        self.stack: XLNetStack = stack
        self.head: nn.Module = model.heads["lm"]
        prompt, mask = inputs.input_ids, inputs.attention_mask
        if expand > 1:
            prompt = prompt.repeat_interleave(expand, dim=0)
            mask = None if mask is None else mask.repeat_interleave(expand, dim=0)
        self.prompt: Tensor = prompt
        self.prompt_mask: Tensor | None = mask
        self.seq: Tensor = prompt  # (N, L) the tokens so far
        n, p = prompt.shape
        self.cache: XLNetCache | None = None
        if stack.config.use_mems_eval:
            self.cache = stack.new_cache(n, capacity + _REFED, dtype=model.dtype, device=prompt.device)
            if mask is not None:
                key_mask = torch.ones(n, self.cache.capacity, dtype=torch.bool, device=prompt.device)
                key_mask[:, :p] = mask.bool()
                self.cache.extra["key_mask"] = key_mask

    @property
    def vocab_size(self) -> int:
        return self.stack.vocab_size

    def prefill(self) -> Tensor:
        """Logits (N, V) fp32 of the token after the prompt."""
        return self._predict(self.prompt)

    def step(self, tokens: Tensor) -> Tensor:
        """Append ``tokens`` (N,); logits (N, V) fp32 of the next token."""
        self.seq = torch.cat([self.seq, tokens[:, None]], dim=1)
        if self.cache is None:
            return self._predict(self.seq)
        self.cache.truncate(self.cache.length - _REFED)
        return self._predict(self.seq[:, -_REFED:])

    def _predict(self, ids: Tensor) -> Tensor:
        n, t = ids.shape
        T = t + 1
        ids = torch.cat([ids, ids.new_zeros(n, 1)], dim=1)  # the dummy token the query stream predicts
        perm = torch.zeros(1, T, T, dtype=torch.bool, device=ids.device)
        perm[:, :, -1] = True  # no position sees the dummy
        targets = torch.full((n, 1), T - 1, dtype=torch.long, device=ids.device)
        cache = self.cache
        if cache is not None:
            mlen = cache.length
            cache.reserve(mlen + T)
            key_mask = cache.extra.get("key_mask")
            mask = None
            if key_mask is not None:
                key_mask[:, mlen : mlen + T] = True
                mask = key_mask[:, : mlen + T]
        else:
            mask = None
            if self.prompt_mask is not None:
                mask = torch.ones(n, T, dtype=torch.bool, device=ids.device)
                mask[:, : self.prompt_mask.shape[1]] = self.prompt_mask.bool()
        out = self.stack.run(
            ids, attention_mask=mask, perm_mask=perm.expand(n, T, T), targets=targets, cache=cache, use_mems=False
        )
        if cache is not None:
            c = self.stack.config
            if c.reuse_len is not None:
                cache.truncate(mlen + min(T, c.reuse_len))
            if c.mem_len is not None:
                cache.keep_last(c.mem_len)
        assert out.query is not None
        return self.head(out.query[:, 0]).float()
