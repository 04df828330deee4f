"""The synthetic oracle of SeqGAN's experiment (Yu et al., AAAI 2017): a random LSTM language model.

The "real" data of the experiment is not text but samples from an oracle: an LSTM language
model whose every parameter is drawn from N(0, 1). Such large weights make its next-token
distributions sharply peaked, so its sequences have structure a generator can learn. Because
the oracle is known exactly, a generator is scored by NLL-oracle,

    NLL-oracle = − E_{Y ~ G} [ (1/T) Σ_t log G_oracle(y_t | y_<t) ],

the oracle's mean per-token negative log-likelihood of the generator's samples (lower is
better). The paper's table (vocabulary 5,000, length 20, sizes 32) reads 10.310 for a random
generator, 9.038 after MLE and 8.736 after SeqGAN.

Everything here is seeded from integers with its own ``torch.Generator`` on the CPU, so the
oracle and its dataset are identical on every machine and device, and nothing is downloaded.
:class:`TokenLSTM` is also the architecture of SeqGAN's generator (``agents/seqgan.py``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

LSTMState = tuple[torch.Tensor, torch.Tensor]  # (h, c), each (1, B, H)


def _block_size(vocab_size: int) -> int:
    """The largest divisor of ``vocab_size`` not above its square root (50 for 5,000)."""
    return next(b for b in range(math.isqrt(vocab_size), 0, -1) if vocab_size % b == 0)


def sample_tokens(
    logits: torch.Tensor, generator: torch.Generator | None = None, uniform: torch.Tensor | None = None
) -> torch.Tensor:
    """One token per row from ``softmax(logits)``, (B, V) -> (B,), by inverting the CDF in two levels.

    The vocabulary is cut into blocks of ``b`` tokens (b ≈ √V divides V): a block is drawn by its
    total probability, then a token within it, so the cumulative sums run over V/b block totals
    and b tokens instead of all V (a long ``cumsum`` is a slow sequential scan on the CPU). The
    weights are unnormalised ``exp(logits − max)``: one pass over the (B, V) logits, then a sum
    per block. On the CPU this is about 3× faster than softmax + a full cumsum and ~10× faster than
    ``torch.multinomial`` for a 5,000-way softmax. The uniform draw is scaled by the total, and
    each level is clamped, so float rounding never runs off the end. ``uniform`` (B,) in [0, 1)
    replaces the draw from ``generator``: the same noise gives the same tokens (used to compare samplers).
    """
    batch, vocab = logits.shape
    block = _block_size(vocab)
    blocks = vocab // block
    weights = (logits - logits.amax(dim=1, keepdim=True)).exp_().view(batch, blocks, block)  # (B, V/b, b)
    block_cdf = weights.sum(dim=2).cumsum_(dim=1)  # (B, V/b)
    if uniform is None:
        uniform = torch.rand(batch, 1, generator=generator, device=logits.device)
    u = uniform.reshape(batch, 1) * block_cdf[:, -1:]  # (B, 1)
    k = torch.searchsorted(block_cdf, u, right=True).clamp_(max=blocks - 1)  # (B, 1): the block
    below = block_cdf.gather(1, (k - 1).clamp(min=0)) * (k > 0)  # (B, 1): mass of the blocks before it
    inner_cdf = weights.gather(1, k.unsqueeze(2).expand(batch, 1, block)).squeeze(1).cumsum_(dim=1)  # (B, b)
    j = torch.searchsorted(inner_cdf, u - below, right=True).clamp_(max=block - 1)  # (B, 1): token in block
    return (k * block + j).squeeze(1)


class TokenLSTM(nn.Module):
    """An autoregressive LSTM over a vocabulary of ``vocab_size`` tokens.

    The embedding has one extra row, index ``vocab_size``: the begin-of-sequence input that
    starts every sequence (so no real token doubles as a start marker).
    """

    def __init__(self, vocab_size: int, embedding_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.bos = vocab_size
        self.hidden_dim = hidden_dim
        self.embedding = nn.Embedding(vocab_size + 1, embedding_dim)
        self.lstm = nn.LSTM(embedding_dim, hidden_dim, batch_first=True)
        self.out = nn.Linear(hidden_dim, vocab_size)

    def initial_state(self, batch: int) -> LSTMState:
        """Zero (h, c) for ``batch`` sequences."""
        weight = self.out.weight
        zeros = torch.zeros(1, batch, self.hidden_dim, device=weight.device, dtype=weight.dtype)
        return zeros, zeros.clone()

    def inputs(self, tokens: torch.Tensor) -> torch.Tensor:
        """Teacher-forcing inputs: BOS then every token but the last, (B, L) -> (B, L)."""
        bos = torch.full_like(tokens[:, :1], self.bos)
        return torch.cat([bos, tokens[:, :-1]], dim=1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits of each token given its prefix, (B, L) -> (B, L, V)."""
        hidden, _ = self.lstm(self.embedding(self.inputs(tokens)))  # (B, L, H)
        return self.out(hidden)

    def log_probs(self, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """``log p_T(y_t | y_<t)`` of each token, (B, L) -> (B, L), with p_T ∝ exp(logits / T)."""
        logits = self(tokens)
        logp = torch.log_softmax(logits if temperature == 1.0 else logits / temperature, dim=-1)  # (B, L, V)
        return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)

    def next_logits(self, prefix: torch.Tensor) -> torch.Tensor:
        """Logits of the token that follows each prefix, (B, t) -> (B, V); t may be 0."""
        bos = torch.full((prefix.shape[0], 1), self.bos, dtype=torch.long, device=prefix.device)
        hidden, _ = self.lstm(self.embedding(torch.cat([bos, prefix], dim=1)))  # (B, t + 1, H)
        return self.out(hidden[:, -1])

    def step(self, token: torch.Tensor, state: LSTMState) -> tuple[torch.Tensor, LSTMState]:
        """Feed one token per sequence, (B,) -> next-token logits (B, V) and the new state."""
        state = self.advance(token, state)
        return self.out(state[0].squeeze(0)), state

    def advance(self, token: torch.Tensor, state: LSTMState) -> LSTMState:
        """Feed one token per sequence, (B,) -> the new state, without the output layer's logits."""
        _, state = self.lstm(self.embedding(token).unsqueeze(1), state)
        return state

    def prefix_states(self, tokens: torch.Tensor) -> list[LSTMState]:
        """The state after reading BOS and ``tokens[:, :t]``, for t = 0..L (L + 1 states).

        ``nn.LSTM`` returns every step's ``h`` but only the last ``c``; a rollout that
        continues a prefix needs both, so the prefix is fed one step at a time.
        """
        batch, length = tokens.shape
        _, state = self.step(torch.full((batch,), self.bos, device=tokens.device), self.initial_state(batch))
        states = [state]
        for t in range(length):
            _, state = self.step(tokens[:, t], state)
            states.append(state)
        return states

    @torch.no_grad()
    def sample(
        self,
        batch: int,
        length: int,
        generator: torch.Generator | None = None,
        prefix: torch.Tensor | None = None,
        state: LSTMState | None = None,
        temperature: float = 1.0,
        uniform: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Sample ``batch`` sequences of ``length`` tokens, (batch, length).

        With ``prefix`` (B, t) and the ``state`` after reading BOS and that prefix (from
        :meth:`prefix_states`), the sequences continue the prefix: Monte-Carlo rollouts.
        ``temperature`` T samples each token from softmax(logits / T): T < 1 sharpens.
        ``uniform`` (batch, length) gives the noise of token t in column t (see :func:`sample_tokens`).
        """
        device = self.out.weight.device
        if prefix is None:
            prefix = torch.empty(batch, 0, dtype=torch.long, device=device)
            token = torch.full((batch,), self.bos, dtype=torch.long, device=device)
            logits, state = self.step(token, self.initial_state(batch))
        else:
            if state is None:
                state = self.prefix_states(prefix)[-1]
            logits = self.out(state[0].squeeze(0))
        out = torch.empty(batch, length, dtype=torch.long, device=device)
        out[:, : prefix.shape[1]] = prefix
        for t in range(prefix.shape[1], length):
            u = None if uniform is None else uniform[:, t]
            token = sample_tokens(logits if temperature == 1.0 else logits / temperature, generator, u)
            out[:, t] = token
            if t + 1 < length:
                logits, state = self.step(token, state)
        return out

    @torch.no_grad()
    def complete_prefixes(
        self,
        sequences: torch.Tensor,
        num_rollouts: int,
        generator: torch.Generator | None = None,
        uniform: torch.Tensor | None = None,
        chunk: int | None = None,
    ) -> torch.Tensor:
        """``num_rollouts`` completions of every proper prefix of each sequence, (B, L) -> (L − 1, R, B, L).

        Entry [t − 1, r] holds rollout r of the prefixes y_1..y_t: those t tokens, then L − t sampled
        ones. All of them advance as one batch: row blocks are ordered by prefix length, each starts
        from this model's state after its prefix (read once for all t), and at step s the blocks of
        prefix length ≤ s, the first s·R·B rows, sample token s. ``uniform`` (L − 1, R, B, L) is the noise
        of each sampled token (see :func:`sample_tokens`), as :meth:`sample` reads it; without it the noise
        is drawn from ``generator`` first, in the order of one :meth:`sample` per prefix length (on the
        CPU the same generator then gives the same rollouts as that loop). ``chunk``
        caps the rows whose logits exist at once (the LSTM step stays one batch); None picks 512 rows on
        the CPU, where a cache-sized chunk is 2.5× faster than one (s·R·B, V) tensor, and all rows on an
        accelerator, where one batch launches the fewest kernels.
        """
        batch, length = sequences.shape
        rows = num_rollouts * batch  # one block: R rollouts of B prefixes of the same length, rollout-major
        out = sequences.repeat((length - 1) * num_rollouts, 1)  # (P·R·B, L): every row starts as its sequence
        if length < 2:
            return out.view(0, num_rollouts, batch, length)
        states = self.prefix_states(sequences)[1:length]  # after y_1..y_t, t = 1..L − 1; each (1, B, H)
        h = torch.cat([s[0].repeat(1, num_rollouts, 1) for s in states], dim=1)  # (1, P·R·B, H)
        c = torch.cat([s[1].repeat(1, num_rollouts, 1) for s in states], dim=1)
        if uniform is None:
            uniform = torch.zeros(length - 1, length, rows, device=sequences.device)
            for t in range(1, length):  # prefix length t samples tokens t..L − 1, each for all its R·B rows
                uniform[t - 1, t:] = torch.rand(length - t, rows, generator=generator, device=sequences.device)
            uniform = uniform.view(length - 1, length, num_rollouts, batch).permute(0, 2, 3, 1)
        noise = uniform.reshape((length - 1) * rows, length)
        if chunk is None and sequences.device.type == "cpu":
            chunk = 512
        for s in range(1, length):
            active = s * rows
            step = active if chunk is None else chunk
            for lo in range(0, active, step):
                hi = min(lo + step, active)
                logits = self.out(h[0, lo:hi])  # (rows, V)
                out[lo:hi, s] = sample_tokens(logits, uniform=noise[lo:hi, s])
            token = out[:active, s]
            if s + 1 < length:
                h_new, c_new = self.advance(token, (h[:, :active], c[:, :active]))
                h[:, :active], c[:, :active] = h_new, c_new
        return out.view(length - 1, num_rollouts, batch, length)


def make_oracle(vocab_size: int, embedding_dim: int = 32, hidden_dim: int = 32, seed: int = 0) -> TokenLSTM:
    """The seeded oracle: every parameter from N(0, 1), drawn in a fixed order on the CPU.

    ``nn.LSTM`` has two bias vectors that are only ever summed; the second is zeroed so the
    effective gate bias is N(0, 1), as in a textbook LSTM with one bias.
    """
    oracle = TokenLSTM(vocab_size, embedding_dim, hidden_dim)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in oracle.named_parameters():
            if name.startswith("lstm.bias_hh"):
                param.zero_()
            else:
                param.copy_(torch.randn(param.shape, generator=gen))
    oracle.requires_grad_(False)
    return oracle.eval()


@torch.no_grad()
def sample_dataset(oracle: TokenLSTM, num: int, length: int, seed: int, chunk: int = 1_000) -> torch.Tensor:
    """``num`` sequences of ``length`` tokens sampled from the oracle, (num, length) int64 on the CPU.

    Sampled in chunks (a batch of 10,000 × a 5,000-way softmax would take 200 MB per step) with
    one generator, so the dataset depends on ``seed`` only.
    """
    gen = torch.Generator().manual_seed(seed)
    oracle = oracle.cpu()
    parts = [oracle.sample(min(chunk, num - i), length, gen) for i in range(0, num, chunk)]
    return torch.cat(parts) if parts else torch.empty(0, length, dtype=torch.long)


@torch.no_grad()
def held_out_dataset(
    oracle: TokenLSTM, num: int, length: int, seed: int, exclude: torch.Tensor, max_rounds: int = 100
) -> torch.Tensor:
    """``num`` oracle sequences, none of them a row of ``exclude`` (the training data): NLL-test's held-out set.

    Sampled as :func:`sample_dataset` with its own ``seed``; a sequence that also occurs in
    ``exclude`` (or twice in the set) is dropped and more are drawn, so the set is disjoint from the
    training data. In the paper's world (5,000 tokens, length 20) a repeat is vanishingly rare; in a
    tiny oracle world it is not, and keeping repeats would let memorising the training set pass as
    generalising. Raises ``ValueError`` if ``max_rounds`` rounds of drawing cannot find ``num``.
    """
    gen = torch.Generator().manual_seed(seed)
    oracle = oracle.cpu()
    seen = {tuple(row) for row in exclude.cpu().tolist()}
    kept: list[list[int]] = []
    for _ in range(max_rounds):
        for row in oracle.sample(min(1_000, max(num, 1)), length, gen).tolist():
            key = tuple(row)
            if key not in seen:
                seen.add(key)
                kept.append(row)
        if len(kept) >= num:
            return torch.tensor(kept[:num], dtype=torch.long).view(num, length)
    raise ValueError(f"held-out set: only {len(kept)} of {num} oracle sequences are new after {max_rounds} rounds")


@torch.no_grad()
def nll_per_sequence(
    oracle: TokenLSTM, sequences: torch.Tensor, chunk: int = 2_000, temperature: float = 1.0
) -> torch.Tensor:
    """A model's mean per-token negative log-likelihood of each sequence, (B, T) -> (B,).

    The model is usually the oracle (NLL-oracle); NLL-test passes the generator, at sampling
    ``temperature`` T (its distribution ∝ exp(logits / T)).
    """
    device = oracle.out.weight.device
    parts = [
        -oracle.log_probs(sequences[i : i + chunk].to(device), temperature).mean(dim=1)
        for i in range(0, sequences.shape[0], chunk)
    ]
    return torch.cat(parts)


def nll_oracle(oracle: TokenLSTM, sequences: torch.Tensor) -> float:
    """NLL-oracle of a sample of sequences (B, T): the paper's quality metric, lower is better."""
    return float(nll_per_sequence(oracle, sequences).mean())
