"""Structured output: decoding constrained by a JSON schema, a regular expression or a Lark
grammar, with llguidance (a maintained constrained-decoding library).

Before each token of a constrained sequence, the grammar's matcher gives the set of tokens
that can continue a valid output; every other token's logit is masked out, so the output
always matches. The matcher consumes each chosen token; once the grammar is complete it
allows only the end of the sequence.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch

from tensorgate.errors import InvalidArgument
from tensorgate.generation.sampling_params import SamplingParams


class GrammarCompiler:
    """Builds matchers for one tokenizer (its llguidance tokenizer is made once)."""

    def __init__(self, tokenizer_json: str, vocab_size: int, eos_token_id: int | None) -> None:
        self._json = tokenizer_json
        self._vocab = vocab_size
        self._eos = eos_token_id
        self._tokenizer: Any = None

    def constraint(self, params: SamplingParams, logits_size: int) -> Constraint | None:
        """The constraint a request asks for, or None; a bad grammar is INVALID_ARGUMENT."""
        if not (params.guided_json or params.guided_regex or params.guided_grammar):
            return None
        try:
            import llguidance
        except ImportError:
            raise InvalidArgument(
                "structured output needs llguidance (the generation extra)"
            ) from None
        if self._tokenizer is None:
            self._tokenizer = llguidance.LLTokenizer(
                self._json, n_vocab=self._vocab, eos_token=self._eos
            )
        matcher = llguidance.LLMatcher
        if params.guided_json:
            try:
                schema = json.loads(params.guided_json)
            except ValueError as exc:
                raise InvalidArgument(f"guided_json is not JSON: {exc}") from None
            grammar = matcher.grammar_from_json_schema(
                json.dumps(schema), defaults={"whitespace_flexible": False}
            )
        elif params.guided_regex:
            grammar = matcher.grammar_from_regex(params.guided_regex)
        else:
            grammar = matcher.grammar_from_lark(str(params.guided_grammar))
        error = matcher.validate_grammar(grammar, self._tokenizer)
        if error:
            raise InvalidArgument(f"the structured-output grammar is invalid: {error}")
        return Constraint(matcher(self._tokenizer, grammar, log_level=0), logits_size)


class Constraint:
    """One sequence's matcher: the tokens allowed next, and the tokens chosen so far."""

    def __init__(self, matcher: Any, logits_size: int) -> None:
        import llguidance.numpy as llnp

        self._matcher = matcher
        self._fill = llnp.fill_next_token_bitmask
        self._mask = llnp.allocate_token_bitmask(1, logits_size)
        self._size = logits_size

    def allowed(self) -> torch.Tensor:
        """A boolean mask over the logits: True where a token may come next."""
        self._fill(self._matcher, self._mask, 0)
        bits = np.unpackbits(self._mask[0].view(np.uint8), bitorder="little")[: self._size]
        allowed = np.zeros(self._size, dtype=bool)
        allowed[: bits.size] = bits.astype(bool)
        return torch.from_numpy(allowed)

    def accept(self, token: int) -> None:
        if not self._matcher.consume_token(token):
            raise InvalidArgument(f"structured output went astray: {self._matcher.get_error()}")

    @property
    def complete(self) -> bool:
        """The grammar is satisfied and admits nothing more."""
        return bool(self._matcher.is_stopped())
