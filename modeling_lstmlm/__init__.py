"""lstmlm: an LSTM language model as a native Hugging Face transformers model.

Importing this package registers the model with `AutoConfig`, `AutoModel`, `AutoModelForCausalLM` and
`AutoModelForSequenceClassification`, so saved folders load without `trust_remote_code` where it is installed.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
)

from .configuration_lstmlm import LSTMLMConfig
from .modeling_lstmlm import (
    LSTMLMCache,
    LSTMLMForCausalLM,
    LSTMLMForSequenceClassification,
    LSTMLMModel,
    LSTMLMPreTrainedModel,
)

AutoConfig.register(LSTMLMConfig.model_type, LSTMLMConfig, exist_ok=True)
AutoModel.register(LSTMLMConfig, LSTMLMModel, exist_ok=True)
AutoModelForCausalLM.register(LSTMLMConfig, LSTMLMForCausalLM, exist_ok=True)
AutoModelForSequenceClassification.register(LSTMLMConfig, LSTMLMForSequenceClassification, exist_ok=True)

__all__ = [
    "LSTMLMCache",
    "LSTMLMConfig",
    "LSTMLMForCausalLM",
    "LSTMLMForSequenceClassification",
    "LSTMLMModel",
    "LSTMLMPreTrainedModel",
]
