"""Tokenizers from the ``tokenizers`` library, with named special-token roles.

A :class:`Tokenizer` wraps a ``tokenizers.Tokenizer`` and knows which token
plays which role (``pad``, ``eos``, ``mask``, ``fim_prefix``, ``sentinel_0``
...). Objectives ask for roles, never for strings, so a tokenizer lacking a
token an objective needs is caught when the model is built.

On disk: ``tokenizer.json`` (the ``tokenizers`` format, which Hugging Face also
reads) and ``tokenizer_config.json`` with the roles.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unimodel.errors import CheckpointError, ConfigError, DataError

if TYPE_CHECKING:
    import tokenizers

    from unimodel.interfaces import Objective

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"

# Role names Hugging Face's tokenizer_config.json uses, and ours.
_HF_ROLE_KEYS = {
    "bos": "bos_token",
    "eos": "eos_token",
    "pad": "pad_token",
    "unk": "unk_token",
    "mask": "mask_token",
    "cls": "cls_token",
    "sep": "sep_token",
}

DEFAULT_BPE_ROLES = {
    "eos": "<|endoftext|>",
    "bos": "<|endoftext|>",
    "pad": "<|pad|>",
    "fim_prefix": "<|fim_prefix|>",
    "fim_middle": "<|fim_middle|>",
    "fim_suffix": "<|fim_suffix|>",
    "mask": "<|mask|>",
}

DEFAULT_WORDPIECE_ROLES = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}
DEFAULT_UNIGRAM_ROLES = {"pad": "<pad>", "eos": "</s>", "unk": "<unk>"}

# Conventional spellings of special tokens, for tokenizer files that do not name their roles.
_CONVENTIONAL = {
    "pad": ("[PAD]", "<pad>", "<|pad|>"),
    "unk": ("[UNK]", "<unk>", "<|unk|>"),
    "cls": ("[CLS]", "<cls>"),
    "sep": ("[SEP]", "<sep>"),
    "mask": ("[MASK]", "<mask>", "<|mask|>"),
    "bos": ("<s>", "<|startoftext|>", "<|endoftext|>"),
    "eos": ("</s>", "<|endoftext|>"),
    "fim_prefix": ("<|fim_prefix|>", "<fim_prefix>"),
    "fim_middle": ("<|fim_middle|>", "<fim_middle>"),
    "fim_suffix": ("<|fim_suffix|>", "<fim_suffix>"),
}


def _roles_from_special_tokens(backend: tokenizers.Tokenizer) -> dict[str, str]:
    """Roles inferred from the special tokens a ``tokenizer.json`` declares, by their usual spellings."""
    specials = {t.content for t in backend.get_added_tokens_decoder().values() if t.special}
    roles = {}
    for role, spellings in _CONVENTIONAL.items():
        for tok in spellings:
            if tok in specials:
                roles[role] = tok
                break
    sentinel = 0
    while f"<extra_id_{sentinel}>" in specials:
        roles[f"sentinel_{sentinel}"] = f"<extra_id_{sentinel}>"
        sentinel += 1
    return roles


def _saved_roles(cfg: Any, path: Path) -> dict[str, str]:
    """The ``unimodel_roles`` table of a ``tokenizer_config.json`` (role -> token), checked."""
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{str(path)!r} must hold a JSON object, got {type(cfg).__name__}")
    roles = cfg.get("unimodel_roles", {})
    if not isinstance(roles, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in roles.items()):
        raise CheckpointError(
            f"{str(path)!r}: unimodel_roles must map role names to token strings, e.g. "
            f'{{"eos": "<|endoftext|>"}}; got {json.dumps(roles)[:80]}'
        )
    return dict(roles)


class Tokenizer:
    """Text <-> ids, plus the special-token roles objectives rely on."""

    def __init__(self, backend: tokenizers.Tokenizer, roles: Mapping[str, str]) -> None:
        self.backend = backend
        self.roles = dict(roles)
        for role, token in self.roles.items():
            if backend.token_to_id(token) is None:
                raise ConfigError(f"tokenizer role {role!r} names token {token!r}, which is not in the vocabulary")

    # ---------------------------------------------------------------- basics
    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def kind(self) -> str:
        """``"bpe"``, ``"wordpiece"``, ``"unigram"`` (or the backend model's name, lower-cased)."""
        return type(self.backend.model).__name__.lower()

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, idx: int) -> str | None:
        return self.backend.id_to_token(idx)

    # ----------------------------------------------------------------- roles
    def has_role(self, role: str) -> bool:
        return role in self.roles

    def special_id(self, role: str) -> int:
        """The id of the token playing ``role``; a clear error when there is none."""
        if role not in self.roles:
            raise ConfigError(
                f"the tokenizer has no {role!r} token (it has: {', '.join(sorted(self.roles)) or 'none'}); "
                f"train or load a tokenizer that reserves one"
            )
        idx = self.backend.token_to_id(self.roles[role])
        assert idx is not None
        return idx

    def role_id(self, role: str) -> int | None:
        return self.special_id(role) if role in self.roles else None

    @property
    def pad_id(self) -> int:
        for role in ("pad", "eos"):
            if role in self.roles:
                return self.special_id(role)
        return 0

    @property
    def special_ids(self) -> set[int]:
        return {self.special_id(r) for r in self.roles}

    # ------------------------------------------------------------------- I/O
    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        self.backend.save(str(folder / TOKENIZER_FILE))
        cfg: dict[str, Any] = {key: self.roles[role] for role, key in _HF_ROLE_KEYS.items() if role in self.roles}
        cfg["unimodel_roles"] = self.roles
        (folder / TOKENIZER_CONFIG_FILE).write_text(json.dumps(cfg, indent=2), encoding="utf-8")

    @classmethod
    def load(cls, folder: str | Path) -> Tokenizer:
        """Read ``tokenizer.json`` (+ roles from ``tokenizer_config.json`` when present)."""
        import tokenizers

        folder = Path(folder)
        path = folder / TOKENIZER_FILE
        if not path.is_file():
            raise CheckpointError(f"no {TOKENIZER_FILE} in {str(folder)!r}")
        try:
            backend = tokenizers.Tokenizer.from_file(str(path))
        except Exception as exc:
            raise CheckpointError(f"{str(path)!r} is not a valid tokenizers file: {exc}") from None
        roles: dict[str, str] = {}
        cfg_path = folder / TOKENIZER_CONFIG_FILE
        if cfg_path.is_file():
            try:
                cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise CheckpointError(f"{str(cfg_path)!r} is not valid JSON: {exc}") from None
            roles = _saved_roles(cfg, cfg_path)
            for role, key in _HF_ROLE_KEYS.items():
                tok = cfg.get(key)
                if isinstance(tok, dict):  # HF's AddedToken form
                    tok = tok.get("content")
                if isinstance(tok, str) and role not in roles and backend.token_to_id(tok) is not None:
                    roles[role] = tok
        for role, token in _roles_from_special_tokens(backend).items():
            roles.setdefault(role, token)
        try:
            return cls(backend, roles)
        except ConfigError as exc:  # a role naming a token the vocabulary lacks
            raise CheckpointError(f"{str(cfg_path)!r} does not fit {str(path)!r}: {exc}") from None

    # -------------------------------------------------------------- training
    @classmethod
    def train_bpe(
        cls,
        texts: Iterable[str],
        vocab_size: int = 8192,
        roles: Mapping[str, str] | None = None,
        min_frequency: int = 2,
        split_digits: bool = False,
    ) -> Tokenizer:
        """Train a byte-level BPE (GPT-2 style) reserving the tokens of ``roles`` first.

        ``split_digits``: every digit is a token of its own ("12345" -> 1 2 3 4 5), so numbers are read
        digit by digit instead of in pieces that depend on how often they occurred.
        """
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        roles = dict(DEFAULT_BPE_ROLES if roles is None else roles)
        specials = list(dict.fromkeys(roles.values()))
        if vocab_size < 256 + len(specials):
            raise ConfigError(
                f"vocab_size {vocab_size} is too small for byte-level BPE: use at least {256 + len(specials)}"
            )
        backend = HFTokenizer(models.BPE())
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.pre_tokenizer = _with_digits(byte_level, split_digits, first=True)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        backend.train_from_iterator(texts, trainer=trainer)
        if backend.get_vocab_size() == 0:
            raise DataError("tokenizer training saw no text")
        return cls(backend, roles)

    @classmethod
    def train_wordpiece(
        cls,
        texts: Iterable[str],
        vocab_size: int = 8192,
        roles: Mapping[str, str] | None = None,
        lowercase: bool = True,
        min_frequency: int = 2,
        split_digits: bool = False,
    ) -> Tokenizer:
        """Train a BERT-style WordPiece tokenizer (``##`` continuation pieces).

        ``split_digits``: every digit is a word of its own (so decoding writes "1 2 3").
        """
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

        roles = dict(DEFAULT_WORDPIECE_ROLES if roles is None else roles)
        specials = list(dict.fromkeys(roles.values()))
        backend = HFTokenizer(models.WordPiece(unk_token=roles.get("unk", "[UNK]")))
        backend.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
        backend.pre_tokenizer = _with_digits(pre_tokenizers.BertPreTokenizer(), split_digits)
        backend.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials, show_progress=False
        )
        backend.train_from_iterator(texts, trainer=trainer)
        return cls(backend, roles)

    @classmethod
    def train_unigram(
        cls,
        texts: Iterable[str],
        vocab_size: int = 8192,
        roles: Mapping[str, str] | None = None,
        n_sentinels: int = 100,
        split_digits: bool = False,
    ) -> Tokenizer:
        """Train a SentencePiece-style Unigram tokenizer (T5), with ``n_sentinels``
        ``<extra_id_i>`` tokens reserved as roles ``sentinel_0`` ... ``sentinel_{n-1}``.
        ``split_digits``: every digit is a token of its own."""
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

        roles = dict(DEFAULT_UNIGRAM_ROLES if roles is None else roles)
        roles.update({f"sentinel_{i}": f"<extra_id_{i}>" for i in range(n_sentinels)})
        specials = list(dict.fromkeys(roles.values()))
        backend = HFTokenizer(models.Unigram())
        backend.normalizer = normalizers.NFKC()
        backend.pre_tokenizer = _with_digits(pre_tokenizers.Metaspace(), split_digits)
        backend.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(
            vocab_size=vocab_size, special_tokens=specials, unk_token=roles.get("unk"), show_progress=False
        )
        backend.train_from_iterator(texts, trainer=trainer)
        return cls(backend, roles)

    @classmethod
    def train(
        cls, kind: str, texts: Iterable[str], vocab_size: int, roles: Mapping[str, str] | None = None, **options: object
    ) -> Tokenizer:
        """Train a tokenizer of ``kind`` (``"bpe"``, ``"wordpiece"`` or ``"unigram"``)."""
        trainers = {"bpe": cls.train_bpe, "wordpiece": cls.train_wordpiece, "unigram": cls.train_unigram}
        if kind not in trainers:
            raise ConfigError(f"unknown tokenizer kind {kind!r}; choose from {', '.join(trainers)}")
        return trainers[kind](texts, vocab_size, roles, **options)  # type: ignore[operator]


def _with_digits(pre: tokenizers.pre_tokenizers.PreTokenizer, split_digits: bool, *, first: bool = False) -> Any:
    """``pre``, followed (or, ``first``, preceded) by a split of numbers into single digits when asked."""
    if not split_digits:
        return pre
    from tokenizers import pre_tokenizers

    digits = pre_tokenizers.Digits(individual_digits=True)
    return pre_tokenizers.Sequence([digits, pre] if first else [pre, digits])


def check_objective_tokens(tokenizer: Tokenizer, objective: Objective, name: str) -> None:
    """Fail at build time when ``tokenizer`` lacks a token ``objective`` needs."""
    missing = [r for r in type(objective).special_tokens if not tokenizer.has_role(r)]
    if missing:
        raise ConfigError(
            f"objective {name!r} needs the special token(s) {', '.join(missing)}, which the tokenizer lacks "
            f"(it has: {', '.join(sorted(tokenizer.roles)) or 'none'}); train the tokenizer with them reserved"
        )
