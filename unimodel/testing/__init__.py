"""The conformance kit: checks every registered component (see :mod:`unimodel.testing.plugin`)."""
