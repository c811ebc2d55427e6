"""The ``[data]`` table of a run (:class:`DataConfig`).

This module imports neither torch nor the readers, so a run file's ``[data]``
table is checked before anything heavy is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from unimodel.config import Config, param

if TYPE_CHECKING:
    from unimodel.registry import TokenizerRecipe

DEFAULT_CORPUS = "pydoc"
TOKENIZER_KINDS = ("bpe", "wordpiece", "unigram")


@dataclass(frozen=True)
class DataConfig(Config):
    """Text source, tokenizer and block settings (the ``[data]`` table of a run config)."""

    section = "data"

    corpus: str | None = param(
        None,
        "a registered corpus (see `unimodel list --kind corpus`): text, or source -> target pairs for a pair "
        "objective such as seq2seq; pydoc when neither corpus nor paths is set",
    )
    corpus_options: dict[str, Any] = param(
        doc="keyword options of the corpus, e.g. { max_value = 9999 } for numbers", default_factory=dict
    )
    paths: tuple[str, ...] | str = param(
        (), "text, JSONL or TSV files, folders (searched recursively) and globs, relative to the working directory"
    )
    validation_paths: tuple[str, ...] | str = param(
        (), "files (folders, globs) held out for validation; when set, validation_fraction is not used"
    )
    format: Literal["auto", "text", "jsonl", "tsv"] = param(
        "auto",
        "file format; auto reads .jsonl/.ndjson as JSONL, .tsv as source<TAB>target pairs, the rest as UTF-8 text",
    )
    text_field: str = param("text", "the JSONL field holding each record's text")
    source_field: str = param("source", "the JSONL field holding each pair's source (pair objectives)")
    target_field: str = param("target", "the JSONL field holding each pair's target (pair objectives)")
    extensions: tuple[str, ...] | None = param(
        None, "file endings read from folders; null: .txt .md .rst .jsonl for text, .jsonl .ndjson .tsv for pairs"
    )
    document_unit: Literal["file", "paragraph", "line"] = param("file", "what one document of a text file is")
    max_documents: int | None = param(
        None, "use only the first N documents (pairs: of the files, or of a pair corpus's training split)"
    )
    block_size: int = param(128, "tokens per packed example (text)")
    validation_fraction: float = param(
        0.1, "fraction of documents or pairs held out for validation (0 for none); a pair corpus has its own split"
    )
    seed: int = param(0, "seed of the train/validation split")
    tokenizer: str | None = param(
        None,
        "bpe, wordpiece or unigram to train one on the training split; or a folder with tokenizer.json; "
        "null: train the model family's own kind (BERT: wordpiece, T5: unigram, GPT and BART: bpe). Only bpe "
        "trains the same vocabulary on every run",
    )
    vocab_size: int = param(8192, "vocabulary size of a trained tokenizer (special tokens included)")
    min_frequency: int = param(2, "a trained tokenizer's pieces occur at least this often")
    split_digits: bool = param(False, "a trained tokenizer splits numbers into single digits, one token each")
    kind: str | None = param(
        None,
        "the registered data kind to read (`unimodel list --kind data`); null: the one the objective names "
        "(text for clm, pairs for seq2seq ...)",
    )
    kind_options: dict[str, Any] = param(
        doc='options of a plugin\'s data kind, e.g. { image_tokenizer = "runs/vq/checkpoint" } for codes',
        default_factory=dict,
    )
    recurrent_memory: int = param(
        0,
        "text: > 0 trains recurrently (a model with mems): each batch row reads consecutive blocks in consecutive "
        "steps and gets the memory its previous block left, at most this many positions; 0: off",
    )

    def check(self) -> None:
        for name in ("paths", "validation_paths"):
            if isinstance(getattr(self, name), str):
                object.__setattr__(self, name, (getattr(self, name),))
        if self.corpus is None and not self.paths:
            object.__setattr__(self, "corpus", DEFAULT_CORPUS)
        if self.block_size < 2:
            self.fail("block_size", "must be at least 2")
        if not 0.0 <= self.validation_fraction < 1.0:
            self.fail("validation_fraction", "must be in [0, 1)")
        if self.max_documents is not None and self.max_documents <= 0:
            self.fail("max_documents", "must be positive")
        if self.vocab_size <= 0:
            self.fail("vocab_size", "must be positive")
        if self.min_frequency < 1:
            self.fail("min_frequency", "must be at least 1")
        if self.recurrent_memory < 0:
            self.fail("recurrent_memory", "must be 0 (off) or a number of positions")
        bad = [e for e in self.extensions or () if not e.startswith(".")]
        if bad:
            self.fail("extensions", f"write file endings with their dot, e.g. '.txt' (got {', '.join(bad)})")

    def extensions_for(self, kind: str) -> tuple[str, ...]:
        """The file endings read from folders for data of ``kind``."""
        if self.extensions is not None:
            return self.extensions
        # the readers' own defaults; imported here, where data is about to be read
        from unimodel.data.pairs import PAIR_EXTENSIONS
        from unimodel.data.text import DEFAULT_EXTENSIONS

        return PAIR_EXTENSIONS if kind == "pairs" else DEFAULT_EXTENSIONS

    @property
    def trains_tokenizer(self) -> bool:
        """True unless ``tokenizer`` names a folder to load."""
        return self.tokenizer is None or self.tokenizer in TOKENIZER_KINDS

    def tokenizer_kind(self, recipe: TokenizerRecipe | None = None) -> str:
        """The kind of tokenizer a run trains: the one named, else the family's ``recipe``, else ``"bpe"``."""
        if self.tokenizer is not None:
            return self.tokenizer
        return recipe.kind if recipe is not None else "bpe"


__all__ = ["DEFAULT_CORPUS", "TOKENIZER_KINDS", "DataConfig"]
