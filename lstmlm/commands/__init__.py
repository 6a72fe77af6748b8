"""One module per command; each has `main(argv=None)`, which `lstmlm.cli` and `scripts/*.py` call."""
