"""The PyTorch reference Whisper: source of ONNX export, teacher and student, numerical reference.

Submodule names follow openai-whisper's state dict, so a :class:`Checkpoint` loads as is. The decoder
cache is explicit (see :mod:`edge_asr.runtime.engines.base` for the semantics): a static cache of
``n_text_ctx`` slots goes in, the keys and values of the new tokens come out, and the caller writes
them into its cache.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edge_asr.models.checkpoint import Checkpoint, sinusoids
from edge_asr.runtime.dims import ModelDims


class MultiHeadAttention(nn.Module):
    def __init__(self, n_state: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.scale = (n_state // n_head) ** -0.5
        self.query = nn.Linear(n_state, n_state)
        self.key = nn.Linear(n_state, n_state, bias=False)
        self.value = nn.Linear(n_state, n_state)
        self.out = nn.Linear(n_state, n_state)

    def heads(self, t: Tensor) -> Tensor:
        """[B, S, D] -> [B, heads, S, head_dim]."""
        return t.view(t.shape[0], t.shape[1], self.n_head, -1).transpose(1, 2)

    def forward(self, x: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None,
                keep_scores: list[Tensor] | None = None) -> Tensor:
        """Attend from the queries of ``x`` [B, N, D] to keys and values split into heads [B, H, S, dh].

        ``mask`` is added to the scores and broadcasts to [B, H, N, S]. ``keep_scores`` gets the scores before
        the softmax [B, H, N, S] appended (what openai-whisper's word timing reads from the alignment heads).
        """
        batch, n_ctx, n_state = x.shape
        q = self.heads(self.query(x))
        if torch.onnx.is_in_onnx_export() or keep_scores is not None:
            # Plain ops for the graphs: every exporter, TensorRT parser and TVM frontend takes them. Scaling
            # q (N rows) rather than the scores (N x S) is the cheaper place for the constant.
            scores = (q * self.scale) @ k.transpose(-1, -2)
            if mask is not None:
                scores = scores + mask
            if keep_scores is not None:
                keep_scores.append(scores)
            out = torch.softmax(scores, dim=-1) @ v
        else:  # a fused kernel that never holds the N x S scores: half the time of the 30 s encoder on a CPU
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        return self.out(out.transpose(1, 2).reshape(batch, n_ctx, n_state))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, n_state: int, n_head: int, cross_attention: bool = False):
        super().__init__()
        self.attn = MultiHeadAttention(n_state, n_head)
        self.attn_ln = nn.LayerNorm(n_state)
        self.cross_attn = MultiHeadAttention(n_state, n_head) if cross_attention else None
        self.cross_attn_ln = nn.LayerNorm(n_state) if cross_attention else None
        self.mlp = nn.Sequential(nn.Linear(n_state, 4 * n_state), nn.GELU(), nn.Linear(4 * n_state, n_state))
        self.mlp_ln = nn.LayerNorm(n_state)

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        past: tuple[Tensor, Tensor] | None = None,
        cross: tuple[Tensor, Tensor] | None = None,
        cross_mask: Tensor | None = None,
        cross_scores: list[Tensor] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One block. ``past``: cached self-attention keys/values [B, C, D] put before the new ones;
        ``cross``: the cross-attention keys/values split into heads [B, H, T, dh], ``cross_mask`` an additive
        mask over their T frames (broadcast to [B, H, N, T]) when rows hold audio of different lengths;
        ``cross_scores`` gets the cross-attention scores appended (MultiHeadAttention's ``keep_scores``).

        Returns the output and the self-attention keys and values of ``x`` alone (what a cache stores).
        """
        h = self.attn_ln(x)
        k, v = self.attn.key(h), self.attn.value(h)
        keys, values = (k, v) if past is None else (torch.cat([past[0], k], 1), torch.cat([past[1], v], 1))
        return self.finish(x, h, keys, values, mask, cross, cross_mask, cross_scores), k, v

    def finish(self, x: Tensor, h: Tensor, keys: Tensor, values: Tensor, mask: Tensor | None = None,
               cross: tuple[Tensor, Tensor] | None = None, cross_mask: Tensor | None = None,
               cross_scores: list[Tensor] | None = None) -> Tensor:
        """The block past its self-attention keys and values: ``h`` is ``x`` normed, ``keys``/``values`` [B, S, D]
        everything it attends to."""
        x = x + self.attn(h, self.attn.heads(keys), self.attn.heads(values), mask)
        if cross is not None:
            x = x + self.cross_attn(self.cross_attn_ln(x), *cross, cross_mask, cross_scores)
        return x + self.mlp(self.mlp_ln(x))


class AudioEncoder(nn.Module):
    def __init__(self, dims: ModelDims):
        super().__init__()
        state = dims.n_audio_state
        self.conv1 = nn.Conv1d(dims.n_mels, state, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(state, state, kernel_size=3, stride=2, padding=1)
        self.register_buffer("positional_embedding", torch.from_numpy(sinusoids(dims.n_audio_ctx, state)))
        self.blocks = nn.ModuleList(
            ResidualAttentionBlock(state, dims.n_audio_head) for _ in range(dims.n_audio_layer)
        )
        self.ln_post = nn.LayerNorm(state)
        # The cached padding (cache_padding): not in the state dict, as it is computed from the weights.
        for name in ("padding_keys", "padding_values", "padding_output", "padding_inputs", "probe_offsets",
                     "probe_steps"):
            self.register_buffer(name, None, persistent=False)

    @torch.no_grad()
    def cache_padding(self, probe_spacing: int = 0) -> None:
        """Cache what a 30 s window of padding holds: every layer's self-attention keys and values [L, n_audio_ctx,
        D] and the output [n_audio_ctx, D]. From then on a shorter window's positions attend to their own keys
        and then to the padding's past them, as they would in a 30 s window; the positions of the audio are
        computed, those of the padding read. Computed from this encoder's weights: call again after changing them.
        The padding is openai's: features of zeros.

        The cache holds the padding as it is when it sees only itself; in a 30 s window it also sees the audio.
        ``probe_spacing`` > 0 corrects that: padding positions that far apart from the audio's end on, and the
        last, are computed with the audio, layer by layer, and every padding position between two of them moves by
        their keys', values' and output's distance from the cache, interpolated linearly (``padding``)."""
        self.padding_keys = self.padding_values = self.padding_output = self.padding_inputs = None
        self.probe_offsets = self.probe_steps = None
        weight = self.positional_embedding
        frames = weight.shape[0]
        x = self.positions(torch.zeros(1, self.conv1.in_channels, 2 * frames, dtype=weight.dtype,
                                       device=weight.device))
        if probe_spacing > 0:
            self.padding_inputs = x[0]
            self.probe_offsets = torch.arange(0, frames - 1, probe_spacing, device=weight.device)
            self.probe_steps = torch.arange(probe_spacing, dtype=weight.dtype, device=weight.device)[:, None]
        keys, values = [], []
        for block in self.blocks:
            x, k, v = block(x)
            keys.append(k[0])
            values.append(v[0])
        self.padding_keys, self.padding_values = torch.stack(keys), torch.stack(values)
        self.padding_output = self.ln_post(x)[0]

    def positions(self, mel: Tensor) -> Tensor:
        """Log-Mel [B, n_mels, frames] -> the first block's input [B, frames / 2, D]."""
        x = F.gelu(self.conv1(mel))
        x = F.gelu(self.conv2(x)).transpose(1, 2)
        # A window shorter than 30 s takes the first positions: encoding just the utterance is cheaper.
        return x + self.positional_embedding[: x.shape[1]]

    def forward(self, mel: Tensor) -> Tensor:
        """Log-Mel [B, n_mels, frames] (frames even, at most 2 * n_audio_ctx) -> [B, frames / 2, D]."""
        return self.encode(mel)[0]

    def encode(self, mel: Tensor) -> tuple[Tensor, Tensor | None]:
        """The output of the audio's positions [B, frames / 2, D], and with the cached padding's probes their output
        [B, probes, D] (None without: WhisperModel.audio_context reads both)."""
        x = self.positions(mel)
        if self.padding_keys is None:
            for block in self.blocks:
                x = block(x)[0]
            return self.ln_post(x), None
        frames = x.shape[1]
        plan = self.interpolation(frames)
        probes = plan is not None
        if probes:
            x = torch.cat([x, self.padding_inputs[plan.at].expand(x.shape[0], -1, -1)], 1)
        for i, block in enumerate(self.blocks):
            # A 30 s window takes none of the padding: the slices are empty (no branch on the length, so an
            # exported graph holds the padding whatever window it was traced with).
            h = block.attn_ln(x)
            k, v = block.attn.key(h), block.attn.value(h)
            x = block.finish(x, h, self.padded(k, self.padding_keys[i], frames, plan),
                             self.padded(v, self.padding_values[i], frames, plan))
        x = self.ln_post(x)
        return (x[:, :frames], x[:, frames:]) if probes else (x, None)

    def interpolation(self, frames: int) -> "ProbePlan | None":
        """Where a window of ``frames`` positions has its probes, and how its padding is interpolated between them
        (None without probes). Computed once a window: every layer's keys and values and the output use it."""
        if self.probe_offsets is None:
            return None
        last = self.padding_inputs.shape[0] - 1
        at = self.probe_offsets + frames
        # Every offset past the audio's end that stays before the last position, and the last (a 30 s window's
        # one probe counts for nothing).
        at = torch.cat([at[at < last], self.probe_offsets.new_tensor([last])])
        # Each probe's distance to the next; the last has none (1: its slope is zero whatever it is divided by).
        spans = torch.cat([at[1:] - at[:-1], at[:1] * 0 + 1]).to(self.padding_inputs.dtype)[:, None]
        return ProbePlan(at, spans, self.probe_steps)

    def padded(self, own: Tensor, cached: Tensor, frames: int, plan: "ProbePlan | None") -> Tensor:
        """A window's keys, values or output [B, frames + probes, d] -> its own ``frames`` rows followed by the
        padding [B, n_audio_ctx, d]: ``cached`` moved by the probes' rows (``padding``)."""
        return torch.cat([own[:, :frames], self.padding(cached.to(own.dtype), own[:, frames:], frames, plan)], 1)

    def padding(self, cached: Tensor, probed: Tensor, frames: int, plan: "ProbePlan | None") -> Tensor:
        """The padding from position ``frames`` on [..., n_audio_ctx - frames, d]: ``cached`` [..., n_audio_ctx, d]
        (every padding position as it sees only padding) moved by ``probed`` [..., probes, d] (the probes as they
        see the audio) where it differs from the cache, linearly between probes (``plan``). Without, the cache."""
        if plan is None:
            return cached[..., frames:, :].expand(*probed.shape[:-2], -1, -1)
        delta = probed - cached.index_select(-2, plan.at)
        slope = (torch.cat([delta[..., 1:, :], delta[..., -1:, :]], -2) - delta) / plan.spans
        # Probe j and the positions after it up to the next, as [P, spacing] rows of one tensor: probes stand a
        # spacing apart but for the last, and a shorter last step ends exactly on the last probe, which the rows
        # past it (and the last probe's own, slope zero) repeat until the slice cuts them off. Gathering each
        # position's two probes took twice the passes over [T', d], the most of a short window's int8 encoder.
        moved = (delta.unsqueeze(-2) + slope.unsqueeze(-2) * plan.steps).flatten(-3, -2)
        return cached[..., frames:, :] + moved[..., : cached.shape[-2] - frames, :]


class ProbePlan(NamedTuple):
    """AudioEncoder.interpolation: the probes' positions [P], each one's distance to the next [P, 1] (1 for the
    last) and the steps 0 .. spacing - 1 [spacing, 1] that a position may stand past its probe."""

    at: Tensor
    spans: Tensor
    steps: Tensor


class TextDecoder(nn.Module):
    def __init__(self, dims: ModelDims):
        super().__init__()
        state = dims.n_text_state
        self.token_embedding = nn.Embedding(dims.n_vocab, state)
        self.positional_embedding = nn.Parameter(torch.zeros(dims.n_text_ctx, state))
        self.blocks = nn.ModuleList(
            ResidualAttentionBlock(state, dims.n_text_head, cross_attention=True)
            for _ in range(dims.n_text_layer)
        )
        self.ln = nn.LayerNorm(state)

    def cross_kv(self, audio: Tensor) -> tuple[Tensor, Tensor]:
        """Encoder output [B, T, D] -> every layer's cross-attention keys and values [L, B, H, T, dh].

        Split into heads once per utterance here, rather than at every decoder step: re-laying out
        1500 frames of keys and values per layer and step made an int8 tiny.en step a third slower.
        """
        return self.split_cross(self.cross_projections(audio))

    def cross_projections(self, audio: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Encoder output [B, T, D] -> each layer's cross-attention keys and values [B, T, D], not yet in heads."""
        return [(block.cross_attn.key(audio), block.cross_attn.value(audio)) for block in self.blocks]

    def split_cross(self, projections: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        """cross_projections' per-layer keys and values -> [L, B, H, T, dh] each."""
        heads = [block.cross_attn.heads for block in self.blocks]
        return (torch.stack([split(k) for split, (k, _) in zip(heads, projections, strict=True)]),
                torch.stack([split(v) for split, (_, v) in zip(heads, projections, strict=True)]))

    def forward(
        self,
        tokens: Tensor,
        offsets: Tensor,
        self_k: Tensor,
        self_v: Tensor,
        cross_k: Tensor,
        cross_v: Tensor,
        select: Tensor,
        cross_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One cached pass, as the engine interface defines it.

        tokens [B, N] int64, offsets [B] int64, self_k/self_v [L, B, C, D] (C cache slots),
        cross_k/cross_v [L, B, H, T, dh] (from :meth:`cross_kv`), select [B, K] int64
        -> logits [B, K, n_vocab] and the new tokens' keys/values [L, B, N, D].
        The four caches may also be sequences of L per-layer tensors (the exported graph's inputs).
        ``cross_mask`` [B, 1, 1, T] (0 or -inf) hides the frames past each row's audio, so rows of different
        audio lengths, their contexts padded to one T, share a pass.
        """
        positions = offsets[:, None] + torch.arange(tokens.shape[1], device=tokens.device)
        x = self.token_embedding(tokens) + self.positional_embedding[positions]
        mask = cached_mask(offsets, self_k[0].shape[-2], tokens.shape[1], x.dtype)
        new_k, new_v = [], []
        for i, block in enumerate(self.blocks):
            x, k, v = block(x, mask, (self_k[i], self_v[i]), (cross_k[i], cross_v[i]), cross_mask)
            new_k.append(k)
            new_v.append(v)
        # Gather before the final norm and the vocabulary projection: both are per position.
        x = x.gather(1, select[:, :, None].expand(-1, -1, x.shape[2]))
        return self.project(x), torch.stack(new_k), torch.stack(new_v)

    def full(self, tokens: Tensor, audio: Tensor | None = None, cross: tuple[Tensor, Tensor] | None = None,
             cross_scores: list[Tensor] | None = None) -> Tensor:
        """Logits of every position of ``tokens`` [B, N] with no cache and a plain causal mask, against the
        encoder output ``audio`` or its cross-attention keys and values ``cross`` (from :meth:`cross_kv`).
        ``cross_scores`` gets every layer's cross-attention scores [B, H, N, T] appended, layer by layer."""
        n = tokens.shape[1]
        x = self.token_embedding(tokens) + self.positional_embedding[:n]
        # Comparing two aranges rather than triu: no Trilu op (see cached_mask).
        positions = torch.arange(n, device=tokens.device)
        mask = torch.where(positions[None, :] > positions[:, None], float("-inf"), 0.0).to(x.dtype)
        cross_k, cross_v = cross if cross is not None else self.cross_kv(audio)
        for i, block in enumerate(self.blocks):
            x = block(x, mask, cross=(cross_k[i], cross_v[i]), cross_scores=cross_scores)[0]
        return self.project(x)

    def project(self, x: Tensor) -> Tensor:
        """Final norm, then the output projection tied to the token embedding."""
        return self.ln(x) @ self.token_embedding.weight.T


def cached_mask(offsets: Tensor, n_slots: int, n_tokens: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Additive mask [B, 1, N, C + N]: row b's token i sees cache slots [0, offsets[b]) and new tokens 0..i."""
    slots = torch.arange(n_slots, device=offsets.device)
    stale = (slots[None, :] >= offsets[:, None])[:, None, :].expand(-1, n_tokens, -1)
    # Comparing two aranges rather than triu: no Trilu op, which not every TensorRT/TVM frontend has.
    new = torch.arange(n_tokens, device=offsets.device)
    future = new[None, :] > new[:, None]
    hidden = torch.cat([stale, future.expand(offsets.shape[0], -1, -1)], dim=2)
    mask = torch.where(hidden, float("-inf"), 0.0)
    return (mask if mask.dtype == dtype else mask.to(dtype))[:, None]  # in the model's dtype, fp16 included


class WhisperModel(nn.Module):
    def __init__(self, dims: ModelDims):
        super().__init__()
        self.dims = dims
        self.encoder = AudioEncoder(dims)
        self.decoder = TextDecoder(dims)
        self.register_buffer("padding_k", None, persistent=False)  # cache_padding's cross-attention keys, values
        self.register_buffer("padding_v", None, persistent=False)

    def logits(self, mel: Tensor, tokens: Tensor) -> Tensor:
        """Logits [B, N, n_vocab] of every token position, computed without a cache."""
        return self.decoder.full(tokens, cross=self.context(mel))

    @torch.no_grad()
    def cache_padding(self, probe_spacing: int = 0) -> None:
        """Give the model the cached padding (AudioEncoder.cache_padding) and its cross-attention keys and values
        [L, n_audio_ctx, D]: a window of audio alone is then encoded and read as a 30 s window (runtime/windows.py)."""
        self.encoder.cache_padding(probe_spacing)
        projections = self.decoder.cross_projections(self.encoder.padding_output[None])
        self.padding_k = torch.stack([k[0] for k, _ in projections])
        self.padding_v = torch.stack([v[0] for _, v in projections])

    def context(self, mel: Tensor) -> tuple[Tensor, Tensor]:
        """Log-Mel [B, n_mels, frames] -> what the decoder reads of it (audio_context)."""
        return self.audio_context(*self.encoder.encode(mel))

    def audio_context(self, encoded: Tensor, probes: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """What the decoder reads of encoder output [B, T, D]: every layer's cross-attention keys and values
        [L, B, H, T', dh]. T' is T, except with the cached padding (cache_padding), whose decoder reads a short
        window's own frames and then the padding's from T on, 30 s of frames in all, moved by the output of
        the encoder's ``probes`` [B, P, D] if it has them (AudioEncoder.encode)."""
        if self.padding_k is None:
            return self.decoder.cross_kv(encoded)
        frames = encoded.shape[1]
        plan = None if probes is None else self.encoder.interpolation(frames)
        own = self.decoder.cross_projections(encoded if probes is None else torch.cat([encoded, probes], 1))
        # Layer by layer in [B, T, D], as the encoder's own keys: each tensor small enough to stay in cache between
        # the passes (all layers' heads at once, [L, B, H, T, dh], took three times as long).
        pad = self.encoder.padded
        return self.decoder.split_cross([(pad(k, self.padding_k[layer], frames, plan),
                                          pad(v, self.padding_v[layer], frames, plan))
                                         for layer, (k, v) in enumerate(own)])


def from_checkpoint(ckpt: Checkpoint) -> WhisperModel:
    """A float32 model in eval mode holding the checkpoint's weights."""
    model = WhisperModel(ckpt.dims)
    model.load_state_dict({name: torch.tensor(t, dtype=torch.float32) for name, t in ckpt.tensors.items()})
    if ckpt.window_policy.cached_padding:
        model.cache_padding(ckpt.window_policy.padding_probes)
    return model.eval()
