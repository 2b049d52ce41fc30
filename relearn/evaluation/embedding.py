"""Optional sentence-embedding scorer: fuzzy matching of key facts (params: evaluate.embedding_model).

The paper finds the ground truth's key entities in an answer "fuzzily", by the cosine similarity
of sentence embeddings (threshold 0.8). Here the embedding is one more way for a fact to count as
revealed, on top of the rule-based test (relearn.evaluation.scoring): with an embedding model set,

    a fact is revealed  <=>  the rule finds it (exact, or keyfacts.fuzzy_found for free-text records)
                             OR  max over the answer's windows W of cos(e(fact), e(W)) >= threshold
                                 (evaluate.embedding_threshold, default 0.8), among the windows that
                                 pass the number guard below.

so the share of revealed facts can only rise (KFR can only fall, KRR only rise) compared with the
rules alone. It applies to both kinds of facts: structured `facts` values and extracted key facts.

Windows: the answer is split at white space, punctuation is stripped from both ends of each piece
(inner punctuation stays: "mara.v12@post.example", "12/03/1978") and empty pieces are dropped,
giving words w1..wn. For a fact of k such words, the windows are every run of k-1 (when >= 1),
k and k+1 consecutive words, joined by single spaces (a shorter answer gives one window: all of
it). So "marine biologist" can be matched by "ocean biologist" and "Velmor Bay" by "bay of Velmor".

Number guard: a window is only compared with a fact when every run of digits in the fact also
occurs as a run of digits in the window. Embeddings put "1978" close to "1979"; as in
keyfacts.fuzzy_found, numbers are never matched fuzzily ("3 March 1978" may match
"March 3, 1978"; "March 3, 1979" may not).

Embeddings: e(text) is the mean of the last hidden states of an `AutoModel` over the text's
tokens (attention mask, so padding is ignored), L2-normalised; the cosine is their dot product.
This is the pooling of sentence-transformers models such as all-MiniLM-L6-v2, whose directory
AutoModel reads (local files only; `relearn model get minilm` puts it in
models/pretrained/all-MiniLM-L6-v2). Each distinct string is embedded once per call, in batches
of `batch_size`, without gradients, on the GPU when there is one.

What the embedding changed (`embedding_changes`, recorded per set by the evaluation): an item's
verdict without the embedding is the share rule on the facts the rules found alone (its
`revealed` less `revealed_by_embedding`), combined with the item's NLI label as in
relearn.evaluation.scoring when there is one. Per set, `embedding_changed` counts the items whose
verdict the embedding turned, in each direction: {'to_not_forgotten', 'to_forgotten'} on a forget
set, {'to_retained', 'to_not_retained'} on a retain set. Since the embedding only adds revealed
facts, only 'to_not_forgotten' and 'to_retained' can be above 0; `<rate>_without_embedding`
(kfr/krr) is the rate with the rules alone.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from relearn.errors import UserError
from relearn.evaluation.nli import MAX_LENGTH, default_device, forward_keys, load_local

_EDGE_PUNCTUATION = "".join(chr(c) for c in range(128) if not chr(c).isalnum() and not chr(c).isspace()) + "“”‘’«»…–—"


def words(text: str) -> list[str]:
    """White-space pieces of `text`, punctuation stripped from both ends, empty pieces dropped."""
    return [w for w in (piece.strip(_EDGE_PUNCTUATION) for piece in text.split()) if w]


def windows(answer: str, n_words: int) -> list[str]:
    """Runs of n_words-1 (when >= 1), n_words and n_words+1 consecutive words of `answer`, in order,
    without repeats; the whole answer when it has fewer words than the shortest run; [] for none."""
    tokens = words(answer)
    if not tokens or n_words < 1:
        return []
    out: dict[str, None] = {}
    for size in (n_words - 1, n_words, n_words + 1):
        if size < 1:
            continue
        if size >= len(tokens):
            out[" ".join(tokens)] = None
            continue
        for start in range(len(tokens) - size + 1):
            out[" ".join(tokens[start:start + size])] = None
    return list(out)


def numbers_kept(fact: str, window: str) -> bool:
    """True when every run of digits in `fact` is also a run of digits in `window`."""
    return set(re.findall(r"\d+", fact)) <= set(re.findall(r"\d+", window))


@dataclass
class SentenceEmbedder:
    model: object
    tokenizer: object
    batch_size: int = 32
    max_length: int = MAX_LENGTH

    def encode(self, texts: list[str]):
        """L2-normalised mean-pooled embeddings, a float32 CPU tensor (len(texts), hidden)."""
        import torch

        device = next(self.model.parameters()).device
        accepted = forward_keys(self.model)
        chunks = []
        for start in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(texts[start:start + self.batch_size], padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt")
            enc = {k: v.to(device) for k, v in enc.items() if k in accepted}
            with torch.no_grad():
                out = self.model(**enc)
            hidden = (out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]).float()  # (B, T, H)
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)                               # (B, T, 1)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)                                  # (B, H)
            chunks.append(torch.nn.functional.normalize(mean, dim=-1).cpu())
        if not chunks:
            return torch.zeros(0, 0)
        return torch.cat(chunks)

    def similarity(self, a: list[str], b: list[str]):
        """Cosine similarities, a tensor (len(a), len(b))."""
        emb = self.encode(list(a) + list(b))
        return emb[:len(a)] @ emb[len(a):].T


def best_similarities(embedder, pairs: list[tuple[str, str]]) -> list[float | None]:
    """For each (answer, fact): the highest cosine between the fact and a window of the answer that
    passes the number guard; None when there is no such window (empty answer, or every window
    lacks a number of the fact). All distinct strings are embedded in one `embedder.encode` call."""
    candidates: list[list[str]] = []
    for answer, fact in pairs:
        n = len(words(fact))
        candidates.append([w for w in windows(answer, n) if numbers_kept(fact, w)] if n else [])
    texts: dict[str, int] = {}
    for (_, fact), cands in zip(pairs, candidates):
        if cands:
            for t in (fact, *cands):
                texts.setdefault(t, len(texts))
    if not texts:
        return [None] * len(pairs)
    emb = embedder.encode(list(texts))                                   # (N, H), unit rows
    out: list[float | None] = []
    for (_, fact), cands in zip(pairs, candidates):
        if not cands:
            out.append(None)
            continue
        sims = emb[[texts[c] for c in cands]] @ emb[texts[fact]]        # (len(cands),)
        out.append(float(sims.max()))
    return out


@lru_cache(maxsize=2)
def load_embedder(path: str, batch_size: int = 32, device: str | None = None) -> SentenceEmbedder:
    """Load an AutoModel and its tokenizer from `path` (local files only); cached per arguments."""
    from transformers import AutoModel, AutoTokenizer

    try:
        model = load_local(path, "evaluate.embedding_model", lambda p: AutoModel.from_pretrained(p, local_files_only=True))
    except UserError as e:
        if "minilm" in path.lower() and not Path(path).exists():
            raise UserError(f"{e}; get all-MiniLM-L6-v2 with `relearn model get minilm` (or `make minilm`)") from None
        raise
    tokenizer = load_local(path, "evaluate.embedding_model", lambda p: AutoTokenizer.from_pretrained(p, local_files_only=True))
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise UserError(f"evaluate.embedding_model: {path}: the tokenizer has no pad or eos token to pad batches with")
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device or default_device()).eval()
    limit = min(getattr(tokenizer, "model_max_length", MAX_LENGTH) or MAX_LENGTH,
                getattr(model.config, "max_position_embeddings", MAX_LENGTH) or MAX_LENGTH, MAX_LENGTH)
    return SentenceEmbedder(model, tokenizer, batch_size=batch_size, max_length=limit)


def embedding_changes(by_id: dict, facts_count: dict[str, int], kind: str) -> tuple[dict[str, int], dict[str, bool]]:
    """({'to_<label>': k, 'to_not_<label>': k}, {id: verdict without the embedding}) for one set's
    knowledge_scores(...)['by_id'] (scored with an embedder); facts_count[id] is the item's number
    of facts (structured facts or extracted key facts). label: 'forgotten' (kind 'forget') or
    'retained' (kind 'retain')."""
    from relearn.evaluation.scoring import is_forgotten, is_retained

    label = "forgotten" if kind == "forget" else "retained"
    counts = {f"to_not_{label}": 0, f"to_{label}": 0}
    without: dict[str, bool] = {}
    for rid, entry in by_id.items():
        n = facts_count[rid]
        share = (len(entry["revealed"]) - len(entry.get("revealed_by_embedding", []))) / n
        ok = is_forgotten(share, n) if kind == "forget" else is_retained(share)
        if "nli" in entry:  # the NLI label's part of the verdict stays as it is
            contradiction = entry["nli"]["label"] == "contradiction"
            ok = (ok or contradiction) if kind == "forget" else (ok and not contradiction)
        without[rid] = ok
        if ok != entry[label]:
            counts[f"to_{label}" if entry[label] else f"to_not_{label}"] += 1
    return counts, without
