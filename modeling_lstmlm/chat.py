"""A chat with an LSTM language model that keeps the conversation's state instead of re-reading it every turn.

Each turn feeds only the tokens the model has not read yet (the end of its last reply, the new user turn and the
assistant header, rendered with the tokenizer's chat template) on top of the kept `LSTMLMCache`, so a turn costs the
same whatever the length of the conversation.
"""

import torch
from transformers import PreTrainedTokenizerBase
from transformers.generation.streamers import BaseStreamer

from .modeling_lstmlm import LSTMLMCache, LSTMLMForCausalLM

END_OF_TURN = "<|end|>"


class ChatSession:
    """One conversation: the messages, every token the model has read or written, and the model's state.

    Args:
        model (`LSTMLMForCausalLM`): the model, in eval mode.
        tokenizer (`PreTrainedTokenizerBase`): a tokenizer with a chat template (the bundled one ends each turn with
            `<|end|>`).
        system (`str`, *optional*): a system message that opens the conversation.
        **generate_kwargs: defaults for every `generate` call (`max_new_tokens`, `do_sample`, `temperature`, ...);
            `send` can override them per turn.

    Example:

    ```python
    >>> session = ChatSession(model, tokenizer, max_new_tokens=64)
    >>> reply = session.send("Who was the first president?")
    >>> reply = session.send("And the second?")  # reads only the new turn on top of the kept state
    ```
    """

    def __init__(
        self,
        model: LSTMLMForCausalLM,
        tokenizer: PreTrainedTokenizerBase,
        system: str | None = None,
        **generate_kwargs,
    ):
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError("The tokenizer has no chat template; ChatSession renders every turn with it")
        self.model = model
        self.tokenizer = tokenizer
        self.system = system
        self.generate_kwargs = generate_kwargs
        end_id = tokenizer.convert_tokens_to_ids(END_OF_TURN)
        stop = [end_id] if isinstance(end_id, int) and end_id != tokenizer.unk_token_id else []
        if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in stop:
            stop.append(tokenizer.eos_token_id)
        if not stop:
            raise ValueError(f"The tokenizer has neither an {END_OF_TURN} token nor an eos token to stop a reply at")
        self.stop_token_ids = stop
        self.reset()

    def reset(self) -> None:
        """Forget the conversation (the system message stays)."""
        self.messages: list[dict[str, str]] = [{"role": "system", "content": self.system}] if self.system else []
        self.token_ids: list[int] = []  # everything the model has read, plus its last generated token
        self.cache: LSTMLMCache | None = None
        self._last_reply_ids: list[int] = []

    def _render(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    def _unread_text(self, messages: list[dict[str, str]]) -> str:
        """The text between the tokens already in the history and the new assistant header."""
        target = self._render(messages, add_generation_prompt=True)
        if not self.token_ids:
            return target
        # Everything up to the start of the last reply's content, then the content: the model wrote those.
        *before, reply = self.messages
        written = self._render(before, add_generation_prompt=True) + reply["content"]
        if not target.startswith(written):
            raise ValueError(
                "The chat template renders earlier turns differently once a new turn is added, so the kept state "
                "cannot be continued; call `reset()` and start a new conversation"
            )
        unread = target[len(written) :]
        # The reply's stop token (usually <|end|>) is in the history already: do not feed its text twice. A reply cut
        # by `max_new_tokens` (or stopped by another token) gets the template's own closing.
        if self._last_reply_ids and self._last_reply_ids[-1] in self.stop_token_ids:
            stop_text = self.tokenizer.decode(self._last_reply_ids[-1:])
            if unread.startswith(stop_text):
                unread = unread[len(stop_text) :]
        return unread

    @torch.no_grad()
    def send(self, text: str, streamer: BaseStreamer | None = None, **generate_kwargs) -> str:
        """Adds a user turn, generates the assistant's reply (streamed to `streamer` if given) and returns it."""
        if not isinstance(text, str):
            raise ValueError(f"The user turn must be a string, got {type(text).__name__}")
        messages = self.messages + [{"role": "user", "content": text}]
        new_ids = self.tokenizer(self._unread_text(messages), add_special_tokens=False).input_ids
        input_ids = torch.tensor([self.token_ids + new_ids], device=self.model.device)
        kwargs = {
            "max_new_tokens": 128,
            "eos_token_id": self.stop_token_ids,
            "pad_token_id": self.tokenizer.pad_token_id,
            **self.generate_kwargs,
            **generate_kwargs,
        }
        out = self.model.generate(
            input_ids, cache=self.cache, streamer=streamer, return_dict_in_generate=True, **kwargs
        )
        self.cache = out.cache
        self.token_ids = out.sequences[0].tolist()
        generated = self.token_ids[input_ids.shape[1] :]
        self._last_reply_ids = generated
        content_ids = generated[:-1] if generated and generated[-1] in self.stop_token_ids else generated
        reply = self.tokenizer.decode(content_ids, skip_special_tokens=True)
        self.messages = messages + [{"role": "assistant", "content": reply}]
        return reply


__all__ = ["ChatSession"]
