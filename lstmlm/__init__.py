"""The `lstmlm` command line: `lstmlm train|generate|chat|evaluate|push|quantize|export-onnx|train-tokenizer|serve`.

The library is `modeling_lstmlm`; this package is only its command-line layer (the one place that prints and reads
the environment). `scripts/*.py` in a checkout are thin wrappers over the same functions.
"""
