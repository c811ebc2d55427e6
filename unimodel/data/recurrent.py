"""Recurrent training on text: a document's consecutive blocks in one batch row across steps.

With ``[data] recurrent_memory = N`` the ``text`` kind's training blocks, which
follow the documents in order, are cut into ``batch_size`` lanes of
consecutive blocks, and step ``s`` gives batch row ``r`` block ``s`` of lane
``r``. The memory a model returned for a row (``extra["mems"]``, the
``mems`` capability) is handed back to it with the next block, so the model
trains with the context of the text before the block, as Transformer-XL and
XLNet pretrain. The memory is detached (no gradient reaches earlier steps)
and kept to the last ``N`` positions.

The protocol, for any family that declares ``mems``: the model takes
``mems``, either per layer ``(B, mlen, D)`` or stacked ``(n_layers, B, mlen,
D)``, an empty tensor meaning no memory yet, and when given ``mems`` returns
the next memory in ``extra["mems"]``; the objective passes a batch's
``mems`` to the model and declares ``passes_mems = True``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from unimodel.capabilities import Cap
from unimodel.data.dataset import PackedData
from unimodel.data.kinds import derive_seed
from unimodel.errors import ConfigError

if TYPE_CHECKING:
    from unimodel.data.tokenizer import Tokenizer
    from unimodel.interfaces import ObjectiveOutput
    from unimodel.model import Model


@dataclass
class RecurrentText(PackedData):
    """The ``text`` kind with ``recurrent_memory``: blocks in lanes, memory carried between steps.

    ``memory``: positions of memory kept per layer (the last ones).
    """

    memory: int = 0
    rows: int = 1  # the global batch size: one lane per batch row (plan_batches)
    carries_state: ClassVar[bool] = True

    @classmethod
    def from_packed(cls, data: PackedData, memory: int) -> RecurrentText:
        return cls(
            train=data.train,
            validation=data.validation,
            block_size=data.block_size,
            n_train_documents=data.n_train_documents,
            n_validation_documents=data.n_validation_documents,
            memory=memory,
        )

    def describe(self) -> str:
        return f"{super().describe()}; recurrent: consecutive blocks per batch row, memory of {self.memory} positions"

    def check_fits(self, model: Model, tokenizer: Tokenizer | None) -> None:
        super().check_fits(model, tokenizer)
        if Cap.MEMS not in model.provides:
            from unimodel.registry import get_registry

            fits = get_registry().compatible_models([Cap.MEMS])
            raise ConfigError(
                f"data.recurrent_memory carries a memory from step to step, but model {model.name!r} keeps none "
                f"(it does not provide 'mems'); use a model that does ({', '.join(fits) or 'none registered'}) "
                "or set data.recurrent_memory = 0"
            )
        if not getattr(model.objective, "passes_mems", False):
            raise ConfigError(
                f"data.recurrent_memory: objective {model.objective_name!r} does not pass a memory to the model "
                "(its class does not declare passes_mems); choose one that does, such as plm, or set "
                "data.recurrent_memory = 0"
            )

    def plan_batches(self, batch_size: int) -> None:
        self.rows = max(1, min(batch_size, self.n_train))

    def epoch_order(self, epoch: int, *, seed: int) -> list[int]:
        """Lane ``r`` holds blocks ``r * L .. r * L + L - 1`` (``L = n_train // rows``); global batch ``s``
        is block ``s`` of every lane, starting at an offset drawn per epoch (each lane wraps around once)."""
        rows = self.rows
        lane = self.n_train // rows
        g = torch.Generator().manual_seed(derive_seed(seed, "lanes", epoch))
        offset = int(torch.randint(0, lane, (), generator=g))
        return [r * lane + (s + offset) % lane for s in range(lane) for r in range(rows)]

    def carry_in(self, batch: dict[str, Tensor], carried: Any) -> dict[str, Tensor]:
        """``mems``: the memory the rows' previous blocks left (an empty tensor at the first step)."""
        rows = batch["input_ids"].shape[0]
        if not isinstance(carried, Tensor) or carried.dim() < 2 or carried.shape[1] != rows:
            carried = torch.empty(0)
        return {**batch, "mems": carried}

    def carry_out(self, output: ObjectiveOutput) -> Tensor | None:
        """The model's new memory, stacked (n_layers, B, mlen, D), its last ``memory`` positions, detached."""
        mems = output.state.get("mems")
        if mems is None:
            return None
        stacked = mems if isinstance(mems, Tensor) else torch.stack(list(mems))
        return stacked[:, :, -self.memory :].detach()


def lanes(order: Sequence[int], rows: int) -> list[list[int]]:
    """The blocks each batch row reads in turn, from an epoch order taken ``rows`` at a time."""
    return [list(order[r::rows]) for r in range(rows)]


__all__ = ["RecurrentText", "lanes"]
