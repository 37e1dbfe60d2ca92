"""What a request asks of generation: how to pick tokens and when to stop."""

from __future__ import annotations

from dataclasses import dataclass

from tensorgate.errors import InvalidArgument


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """Per-request sampling and stopping; temperature 0 is greedy."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no limit
    seed: int | None = None
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop_token_ids: tuple[int, ...] = ()
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None  # how many top alternatives to report with each token
    # Structured output: at most one of a JSON schema (as JSON text), a regular expression,
    # or a Lark grammar; decoding is constrained so the output always matches.
    guided_json: str | None = None
    guided_regex: str | None = None
    guided_grammar: str | None = None

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise InvalidArgument(f"max_tokens must be at least 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise InvalidArgument(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise InvalidArgument(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise InvalidArgument(f"top_k must be >= 0, got {self.top_k}")
        if self.repetition_penalty <= 0:
            raise InvalidArgument("repetition_penalty must be > 0")
        if self.logprobs is not None and not 0 <= self.logprobs <= 20:
            raise InvalidArgument("logprobs must be between 0 and 20")
        guides = [g for g in (self.guided_json, self.guided_regex, self.guided_grammar) if g]
        if len(guides) > 1:
            raise InvalidArgument("give one of guided_json, guided_regex and guided_grammar")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0
