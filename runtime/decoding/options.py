"""What decoding and long-form transcription can be asked to do, with defaults and a validate()
that explains what is wrong. The CLI and the Python API build these same objects."""
from __future__ import annotations

from dataclasses import dataclass

from edge_asr.runtime.errors import require
from edge_asr.runtime.tokenizer import TASKS, language_code
from edge_asr.runtime.windows import ENCODER_CONTEXTS, WindowPolicy


@dataclass(frozen=True)
class DecodingOptions:
    """How one window is decoded. Temperature and the previous-text prompt are not options: long-form
    transcription changes them from window to window and passes them to decode_window()."""

    task: str = "transcribe"  # "transcribe" (X -> X) or "translate" (X -> English)
    language: str | None = None  # code or name; None: English-only models use English, others detect it
    beam_size: int = 1  # 1: greedy; more: beam search (used at temperature 0 only)
    best_of: int = 5  # independent samples at temperature > 0, the most likely one is kept
    patience: float = 1.0  # beam search stops after beam_size * patience finished candidates (arxiv:2204.05424)
    length_penalty: float | None = None  # None: rank candidates by logprob / length; alpha: Google NMT's penalty
    sample_len: int | None = None  # most tokens sampled per window; None: half the text context (224)
    # Token ids never sampled; -1 stands for the non-speech symbols. None: the model's own list (a fact of the
    # model that a loaded bundle fills in, runtime/transcriber.py), or -1 alone for a model without one.
    suppress_tokens: tuple[int, ...] | None = None
    suppress_blank: bool = True  # no blank or <|endoftext|> as the first sampled token
    without_timestamps: bool = False  # text only (<|notimestamps|>); no segment times inside a window
    max_initial_timestamp: float | None = 1.0  # seconds: the latest time the first timestamp may state
    # Repetition guard: an n-gram repeated back to back at least loop_min_repeats times over at
    # least loop_min_tokens tokens (timestamps left out) is a loop; decoding stops once every row
    # loops. loop_min_repeats 0 turns the check off.
    loop_min_repeats: int = 3
    loop_min_tokens: int = 20

    def validate(self) -> "DecodingOptions":
        require(self.task in TASKS, f"task must be one of {', '.join(TASKS)}, not {self.task!r}.")
        if self.language is not None:
            language_code(self.language)
        require(self.beam_size >= 1, f"beam_size must be at least 1 (1 is greedy), not {self.beam_size}.")
        require(self.best_of >= 1, f"best_of must be at least 1, not {self.best_of}.")
        require(self.patience > 0, f"patience must be positive, not {self.patience}.")
        require(
            round(self.beam_size * self.patience) >= 1,
            f"beam_size * patience must round to at least 1 (got {self.beam_size} * {self.patience}).",
        )
        require(
            self.length_penalty is None or 0 <= self.length_penalty <= 1,
            f"length_penalty must be None or between 0 and 1, not {self.length_penalty}.",
        )
        require(
            self.sample_len is None or self.sample_len >= 1,
            f"sample_len must be None or at least 1, not {self.sample_len}.",
        )
        require(
            self.suppress_tokens is None or all(isinstance(t, int) and t >= -1 for t in self.suppress_tokens),
            f"suppress_tokens must be token ids or -1 (the non-speech symbols), not {self.suppress_tokens}.",
        )
        require(
            self.max_initial_timestamp is None or self.max_initial_timestamp >= 0,
            f"max_initial_timestamp must be None or at least 0 seconds, not {self.max_initial_timestamp}.",
        )
        require(self.loop_min_repeats >= 0, f"loop_min_repeats must not be negative, not {self.loop_min_repeats}.")
        require(self.loop_min_tokens >= 0, f"loop_min_tokens must not be negative, not {self.loop_min_tokens}.")
        return self


@dataclass(frozen=True)
class TranscribeOptions(DecodingOptions):
    """Decoding options plus how long-form audio is cut into windows and how a failed window is
    retried or dropped. Defaults are openai-whisper's and faster-whisper's, plus the repetition guard.
    Being DecodingOptions too, it is what decode_window() takes for each window."""

    # Tried in order; the next is used when a window fails the compression, logprob or loop checks.
    temperatures: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    compression_ratio_threshold: float | None = 2.4  # above: too repetitive, retry
    logprob_threshold: float | None = -1.0  # average token logprob below: retry
    # no-speech probability above this, with an average logprob below logprob_threshold: silence, skipped
    no_speech_threshold: float | None = 0.6
    condition_on_previous_text: bool = True  # prompt each window with the text before it
    prompt_reset_on_temperature: float = 0.5  # a window decoded hotter than this starts a fresh prompt
    initial_prompt: str | None = None  # text that primes the first window (names, vocabulary, style)
    # Text tokens the first window is expected to write (a stream's previous decoding of the same utterance),
    # checked in the decoder passes greedy decoding runs anyway: fewer steps, the same rules (decoding/draft.py).
    draft: tuple[int, ...] = ()
    # Repetition guard: more tokens per second of audio than this means the decoder is looping.
    max_tokens_per_second: float | None = 10.0
    seed: int = 0  # seeds the sampling at temperature > 0, so runs are reproducible
    window_frames: int = 3000  # Mel frames per window at most (100 a second)
    # How long each encoder window is (runtime/windows.py): the model's policy, a fact of the model that a
    # loaded bundle fills in when None (stock Whisper's 30 s windows for a model that does not say), and the
    # user's choice: "full" pads every window to window_frames, "utterance" encodes its audio plus the
    # model's margin, None is the model's own choice.
    window_policy: WindowPolicy | None = None
    encoder_context: str | None = None
    word_timestamps: bool = False  # each segment's words with their times (runtime/word_timing.py)

    @property
    def policy(self) -> WindowPolicy:
        return self.window_policy or WindowPolicy()

    def validate(self) -> "TranscribeOptions":
        super().validate()
        require(len(self.temperatures) > 0, "temperatures must hold at least one temperature.")
        require(all(isinstance(t, int) and t >= 0 for t in self.draft), "draft must hold token ids.")
        require(all(t >= 0 for t in self.temperatures), f"temperatures must not be negative: {self.temperatures}.")
        require(
            self.compression_ratio_threshold is None or self.compression_ratio_threshold > 0,
            f"compression_ratio_threshold must be None or positive, not {self.compression_ratio_threshold}.",
        )
        require(
            self.logprob_threshold is None or self.logprob_threshold <= 0,
            f"logprob_threshold must be None or at most 0, not {self.logprob_threshold}.",
        )
        require(
            self.no_speech_threshold is None or 0 <= self.no_speech_threshold <= 1,
            f"no_speech_threshold must be None or a probability, not {self.no_speech_threshold}.",
        )
        require(
            self.max_tokens_per_second is None or self.max_tokens_per_second > 0,
            f"max_tokens_per_second must be None or positive, not {self.max_tokens_per_second}.",
        )
        require(
            self.window_frames >= 2 and self.window_frames % 2 == 0,
            f"window_frames must be an even number of Mel frames, not {self.window_frames}.",
        )
        require(
            self.encoder_context is None or self.encoder_context in ENCODER_CONTEXTS,
            f"encoder_context must be None or one of {', '.join(ENCODER_CONTEXTS)}, not {self.encoder_context!r}.",
        )
        self.policy.validate()
        return self
