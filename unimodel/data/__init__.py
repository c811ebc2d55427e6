"""Text data: corpora, tokenizers, packing into blocks, deterministic splits."""
