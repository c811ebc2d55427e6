"""The CMLM objective's config class.

This module imports neither torch nor the objective's code, so a run file is
checked against it (the registry record names it) before anything heavy is
imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from unimodel.config import Config, param

LengthMode = Literal["target", "offset"]


@dataclass(frozen=True)
class CMLMConfig(Config):
    section = "objective 'cmlm'"

    label_smoothing: float = param(0.1, "label smoothing of the masked-token cross-entropy")
    length_weight: float = param(0.1, "weight of the length loss added to the token loss")
    length_mode: LengthMode = param(
        "target", 'what the length head predicts: "target" (the target length) or "offset" (target - source length)'
    )
    max_target_length: int = param(256, "targets are cut to this many tokens; the length head predicts up to it")
    max_source_length: int | None = param(None, "truncate sources to this many tokens (framing included)")
    add_eos: bool = param(True, "end each source with the tokenizer's eos (targets carry no framing)")
    add_bos: bool = param(False, "start each source with the tokenizer's bos")
    mask_token_id: int | None = param(None, "id of the mask token (the tokenizer's mask role when null)")

    def check(self) -> None:
        self.require_fraction("label_smoothing")
        if self.length_weight < 0:
            self.fail("length_weight", "must be >= 0")
        self.require_positive("max_target_length", "max_source_length")
        if self.mask_token_id is not None and self.mask_token_id < 0:
            self.fail("mask_token_id", "must be a token id (>= 0)")


__all__ = ["CMLMConfig", "LengthMode"]
