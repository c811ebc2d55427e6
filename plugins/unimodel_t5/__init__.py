"""The T5 family for unimodel."""
