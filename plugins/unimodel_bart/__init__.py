"""The BART family for unimodel."""
