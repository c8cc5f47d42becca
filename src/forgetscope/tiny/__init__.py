"""The embedded default: corpora that ship with Python and PyPI packages, and a tiny Llama."""
