"""The BERT family for unimodel."""
