"""Text to token ids and back, with the model's own tokenizer files and chat template.

`tokenizer.json` is read with the `tokenizers` library (what Hugging Face's fast tokenizers
are built on); `tokenizer_config.json` gives the special tokens and the chat template, a
Jinja template rendered in a sandbox. Decoding is incremental: each new token's text is
the new suffix of the whole output's text, held back while it ends in an incomplete UTF-8
sequence.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tensorgate.errors import InvalidArgument, ModelLoadError


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):
        content = value.get("content")
        return content if isinstance(content, str) else None
    return value if isinstance(value, str) else None


class Tokenizer:
    """One model's tokenizer: encode, decode, chat template, end-of-sequence id."""

    def __init__(self, directory: Path) -> None:
        from tokenizers import Tokenizer as FastTokenizer

        path = directory / "tokenizer.json"
        if not path.is_file():
            raise ModelLoadError(f"{directory.name}/ has no tokenizer.json")
        self.json_text = path.read_text()  # what llguidance builds its tokenizer from
        self._fast = FastTokenizer.from_str(self.json_text)
        config_path = directory / "tokenizer_config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        self.chat_template: str | None = config.get("chat_template")
        self.bos_token = _token_text(config.get("bos_token")) or ""
        self.eos_token = _token_text(config.get("eos_token")) or ""
        self.eos_token_id = self._fast.token_to_id(self.eos_token) if self.eos_token else None
        self.vocab_size = self._fast.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return list(self._fast.encode(text).ids)

    def decode(self, ids: list[int]) -> str:
        return str(self._fast.decode(ids, skip_special_tokens=True))

    def render_chat(self, messages: list[dict[str, Any]]) -> str:
        """The prompt text of a conversation, ready for the assistant's turn."""
        if not self.chat_template:
            raise InvalidArgument("this model's tokenizer has no chat template")
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        template = environment.from_string(self.chat_template)
        return template.render(
            messages=messages,
            add_generation_prompt=True,
            bos_token=self.bos_token,
            eos_token=self.eos_token,
        )


class IncrementalText:
    """A sequence's output text, released as complete characters only."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.text = ""  # released so far

    def add(self, output_ids: list[int]) -> str:
        """The text that the latest token completes ("" while a character is unfinished)."""
        text = self.tokenizer.decode(output_ids)
        if text.endswith("\ufffd") or not text.startswith(self.text):
            return ""
        delta = text[len(self.text) :]
        self.text = text
        return delta

    def flush(self, output_ids: list[int]) -> str:
        """At the end: whatever is left, unfinished characters included (as U+FFFD)."""
        text = self.tokenizer.decode(output_ids)
        delta = text[len(self.text) :] if text.startswith(self.text) else ""
        self.text = text
        return delta
