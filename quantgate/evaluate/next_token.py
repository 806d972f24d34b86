"""Next-token distributions, kept small: what a comparison keeps of the
baseline's and reads off each candidate's.

A language model's scores at a position (the target token's log-probability,
the top token, the KL divergence from the baseline) need the whole
distribution over the vocabulary only for a moment. With a 262k-token
vocabulary one 512-token window's logits are 0.5 GB in fp32, and a
log-softmax, its exponent and a KL product are as large again each. So the
output head runs once on the positions scored, and its logits are reduced a
few positions at a time (`CHUNK_ELEMENTS`) to

- the target token's log-probability and the top token, and
- for the baseline, its TOP_K most likely tokens and their log-probabilities;
  for a candidate, its log-probabilities at the baseline's TOP_K tokens.

The KL divergence is then that of the two distributions over the baseline's
TOP_K tokens and one bucket for the rest of the vocabulary. It is exact when
the rest has no mass and otherwise a lower bound on the full KL (merging
outcomes never increases a divergence); `rest_mass` says how much the
baseline put outside its TOP_K, so a reader knows how close the bound is.
Measured on the bundled SmolLM2 (not fine-tuned) over BBC news text, a
high-entropy case: 2.5% of the mass lies outside the top 1,024 tokens, and
the bound is 2-3% under the full KL of a 3-bit candidate (256 tokens: 6.5%
and 7%). The baseline is scored once and only these summaries are kept
(about 4 MB per 512-token window): a candidate costs one forward pass, and
the baseline model is not run again.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

TOP_K = 1024
CHUNK_ELEMENTS = 2**24          # logits reduced at once: 64 MB in fp32


@dataclass
class Positions:
    """Scores at N positions of one sequence."""
    target: torch.Tensor                  # [N] log p(target token), fp32
    top1: torch.Tensor                    # [N] the most likely token
    idx: torch.Tensor | None              # [N, k] the baseline's TOP_K tokens (the baseline's own summary only)
    at: torch.Tensor                      # [N, k] log-probabilities at the baseline's TOP_K tokens, fp32

    def __len__(self) -> int:
        return int(self.target.shape[0])

    def __getitem__(self, s: slice) -> Positions:
        return Positions(self.target[s], self.top1[s], None if self.idx is None else self.idx[s], self.at[s])

    @staticmethod
    def cat(parts: list[Positions]) -> Positions:
        return Positions(torch.cat([p.target for p in parts]), torch.cat([p.top1 for p in parts]),
                         None if parts[0].idx is None else torch.cat([p.idx for p in parts]),
                         torch.cat([p.at for p in parts]))


def reduce(logits: torch.Tensor, targets: torch.Tensor, base: Positions | None = None) -> Positions:
    """[N, vocab] logits (or log-probabilities) at N positions and their targets -> Positions,
    with TOP_K tokens of its own (base None: this is the baseline) or read at base's."""
    x = logits.float()
    lse = torch.logsumexp(x, dim=-1, keepdim=True)
    target = (x.gather(-1, targets.to(x.device)[:, None]) - lse)[:, 0]
    top1 = x.argmax(-1)
    if base is None:
        vals, idx = x.topk(min(TOP_K, x.shape[-1]), dim=-1)
        return Positions(target.cpu(), top1.cpu(), idx.int().cpu(), (vals - lse).cpu())
    return Positions(target.cpu(), top1.cpu(), None, (x.gather(-1, base.idx.to(x.device, torch.long)) - lse).cpu())


def _reduce_all(logits: torch.Tensor, targets: torch.Tensor, base: Positions | None) -> Positions:
    """reduce() over [N, vocab] logits a few positions at a time: its temporaries stay small."""
    step = max(1, CHUNK_ELEMENTS // max(1, logits.shape[-1]))
    return Positions.cat([reduce(logits[i:i + step], targets[i:i + step], None if base is None else base[i:i + step])
                          for i in range(0, logits.shape[0], step)])


def _split(p: Positions, counts: list[int]) -> list[Positions]:
    edges = [0]
    for n in counts:
        edges.append(edges[-1] + n)
    return [p[i:j] for i, j in zip(edges, edges[1:])]


@torch.inference_mode()
def score(module, ids: torch.Tensor, am: torch.Tensor | None, rows: list[tuple[int, int, int]],
          targets: list[torch.Tensor], bases: list[Positions] | None = None) -> list[Positions]:
    """Scores of a causal LM at (row, first position, count) of a batch `ids`, whose next tokens
    are `targets`; `bases` are the baseline's Positions there (None: this is the baseline).
    The output head runs once, on those positions only (a fifth of a small model's work over
    every position); its logits are reduced a chunk at a time. A model served by another
    runtime returns its own log-probabilities at the positions; one without a separable
    decoder and head runs whole."""
    counts = [n for _, _, n in rows]
    tgt = torch.cat([t.reshape(-1) for t in targets])
    base = None if bases is None else Positions.cat(bases)
    if hasattr(module, "continuation_logprobs"):
        logits = torch.cat(module.continuation_logprobs(ids, am, rows))
    else:
        decoder, head = module.get_decoder(), module.get_output_embeddings()
        if decoder is None or head is None:
            out = module(input_ids=ids, attention_mask=am).logits
            logits = torch.cat([out[j, s:s + n] for j, s, n in rows])
        else:
            h = decoder(input_ids=ids, attention_mask=am).last_hidden_state
            logits = head(torch.cat([h[j, s:s + n] for j, s, n in rows]))
            cap = getattr(module.config, "final_logit_softcapping", None)
            if cap:                                # Gemma 2's: what its own forward does after the head
                logits = torch.tanh(logits / cap) * cap
    return _split(_reduce_all(logits, tgt, base), counts)


def _rest(lp: torch.Tensor) -> torch.Tensor:
    """log(1 - sum exp(lp)) over the last dimension: the log-mass outside the given tokens."""
    return torch.log1p(-lp.exp().sum(-1).clamp(max=1 - 1e-12))


def kl(base: Positions, cand: Positions) -> torch.Tensor:
    """[N] KL(baseline || candidate) over the baseline's TOP_K tokens and one bucket for the rest."""
    p, q = base.at.double(), cand.at.double()
    rp, rq = _rest(p), _rest(q)
    return ((p.exp() * (p - q)).sum(-1) + rp.exp() * (rp - rq)).clamp(min=0).float()


def rest_mass(base: Positions) -> torch.Tensor:
    """[N] the baseline's probability outside its TOP_K tokens."""
    return _rest(base.at.double()).exp().float()
