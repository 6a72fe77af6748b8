"""Int8 weights for CPU inference, in one call: `quantize_model(model)`, or `from_pretrained(folder, quantize="int8")`.

The LSTM layers and the output layer get int8 weights (symmetric, one float scale per output row) and run on torch's
dynamic-quantization kernel (`torch.ops.quantized.linear_dynamic`: fbgemm / oneDNN on x86, qnnpack on ARM), which
quantizes the activations on the fly; the embedding (one row read per token) and the optional projection stay in
floating point. Each LSTM step is two int8 matmuls (calls of the layer's `ih` and `hh` modules) and the gate math;
prompts run the same steps position by position, so they give exactly what decoding token by token gives. The weight
bytes read per token drop about 4x; the folder shrinks less, since the float
embedding stays (and a tied output layer gets its own int8 copy). For the fastest int8 on a CPU, see
`onnx_export.quantize_onnx` (onnxruntime).

`quantize_model` records `{"method": "int8", ...}` in `model.config.quantization`; `save_pretrained` then writes a
folder of int8 weights that `AutoModelForCausalLM.from_pretrained` (or `trust_remote_code=True`) loads as int8: the
model classes build the int8 modules (`Int8LSTMLMLayer`, `Int8Linear` in quantization_lstmlm.py, which travels as
remote code next to modeling_lstmlm.py) from that entry before the weights are loaded. `scripts/quantize.py` does
this for a saved folder and reports the perplexity before and after.

Why these kernels and not torchao: torchao 0.18's int8 configs (`Int8DynamicActivationInt8WeightConfig`,
`Int8WeightOnlyConfig`) run in eager mode on x86 through generic int8 matmuls that are slower than the float matmul at
batch 1 on this project's machine (benchmarks/README.md); its fast CPU kernels target ARM or need torch.compile.
`torch.ao.quantization.quantize_dynamic` warns that it is deprecated and keeps its weights in packed objects that
safetensors cannot store; the kernel it calls is the one used here, on plain int8 tensors packed lazily.

Example:

```python
>>> from transformers import AutoModelForCausalLM
>>> from modeling_lstmlm.quantization import quantize_model

>>> model = quantize_model(AutoModelForCausalLM.from_pretrained("runs/demo"))
>>> model.save_pretrained("runs/demo-int8")  # AutoModelForCausalLM.from_pretrained("runs/demo-int8") is int8
>>> same = AutoModelForCausalLM.from_pretrained("runs/demo", quantize="int8")  # or quantize while loading
```
"""

from torch import nn

from .quantization_lstmlm import QUANTIZATION_METHODS, Int8Linear, Int8LSTMLMLayer, quantize_int8

INT8 = "int8"


def quantize_model(model: nn.Module, method: str = INT8, reduce_range: bool = True) -> nn.Module:
    """Quantize a float LSTMLM model in place with `method` and return it in eval mode. `"int8"`:
    `modeling_lstmlm.quantization_lstmlm.quantize_int8`, which says what changes; `from_pretrained(folder,
    quantize="int8")` does the same while loading.
    """
    if method not in QUANTIZATION_METHODS:
        raise ValueError(f"`method` must be one of {QUANTIZATION_METHODS}, got {method!r}")
    return quantize_int8(model, reduce_range=reduce_range)


def perplexity_report(model, tokenizer, text: str, windows=(256, 1), show_progress: bool = False) -> dict:
    """Token- and word-level perplexity of `text` for each scoring window (`evaluation.evaluate_text`).

    Window 1 feeds one token at a time, so it measures the decoding path (`generate`'s steps); larger windows go
    through the multi-token path (for a float model the fused kernel; an int8 model runs its steps either way, and
    only its output layer's activation scales, one per call, differ).
    Returns `{"window_<n>": {"token_perplexity", "word_perplexity", "num_tokens", "num_words"}}`.
    """
    from .evaluation import evaluate_text

    report = {}
    for window in windows:
        result = evaluate_text(model, tokenizer, text, window=window, show_progress=show_progress)
        report[f"window_{window}"] = {
            "token_perplexity": result.token_perplexity,
            "word_perplexity": result.word_perplexity,
            "num_tokens": result.num_tokens,
            "num_words": result.num_words,
        }
    return report


__all__ = ["INT8", "Int8LSTMLMLayer", "Int8Linear", "perplexity_report", "quantize_model"]
