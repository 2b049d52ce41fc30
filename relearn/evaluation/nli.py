"""Optional NLI (natural language inference) scorer for KFR and KRR (params: evaluate.nli_model).

The paper judges each (answer, ground truth) pair with an NLI model as well as by key facts
(see relearn.evaluation.scoring for how the two verdicts combine). This module only runs the model:

    nli = load_nli(path)                      # a local sequence-classification NLI model
    nli.predict(premises, hypotheses)         # -> [{'label': 'contradiction', 'probs': {...}}, ...]

Model: any `AutoModelForSequenceClassification` checkpoint trained on NLI (MNLI, SNLI, ...), loaded
with local_files_only (nothing is downloaded). Its label names are read from config.id2label: one
must be "contradiction" and one "entailment", compared case-insensitively (a third, usually
"neutral", is allowed and so are more); otherwise load_nli raises a UserError naming the labels it
found. A model whose labels are LABEL_0, LABEL_1, ... cannot be used: its meaning is unknown.

Per pair: premise and hypothesis are tokenised together as one pair (truncated to the model's
maximum length, the longer side first), the logits are soft-maxed over all labels and the label
is the arg-max, as the `text-classification` pipeline of the paper's code does. Batched
(`batch_size` pairs a forward pass, right padding with an attention mask), no gradients, on the
GPU when there is one.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from functools import lru_cache

from relearn.errors import UserError

MAX_LENGTH = 512


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def forward_keys(model) -> frozenset:
    """Names of the arguments model.forward accepts (so a tokenizer's extra outputs can be dropped)."""
    return frozenset(inspect.signature(model.forward).parameters)


@dataclass
class NLIModel:
    """A loaded NLI classifier. `labels[i]` is the lower-cased name of class i."""

    model: object
    tokenizer: object
    labels: list[str]
    batch_size: int = 32
    max_length: int = MAX_LENGTH
    _forward_keys: frozenset = field(default=frozenset(), repr=False)

    def predict(self, premises: list[str], hypotheses: list[str]) -> list[dict]:
        """One {'label': str, 'probs': {label: float}} per (premise, hypothesis) pair."""
        import torch

        if len(premises) != len(hypotheses):
            raise ValueError(f"{len(premises)} premises for {len(hypotheses)} hypotheses")
        device = next(self.model.parameters()).device
        out: list[dict] = []
        for start in range(0, len(premises), self.batch_size):
            enc = self.tokenizer(premises[start:start + self.batch_size], hypotheses[start:start + self.batch_size],
                                 padding=True, truncation="longest_first", max_length=self.max_length,
                                 return_tensors="pt")
            # only what forward() accepts (DistilBERT takes no token_type_ids)
            enc = {k: v.to(device) for k, v in enc.items() if not self._forward_keys or k in self._forward_keys}
            with torch.no_grad():
                logits = self.model(**enc).logits.float()               # (B, n_labels)
            probs = torch.softmax(logits, dim=-1).cpu()                  # (B, n_labels)
            for row in probs.tolist():
                best = max(range(len(row)), key=row.__getitem__)
                out.append({"label": self.labels[best], "probs": dict(zip(self.labels, row))})
        return out


def load_local(path: str, what: str, loader):
    """loader(path), with a failure to load turned into a UserError naming the parameter `what`."""
    try:
        return loader(path)
    except (OSError, ValueError) as e:
        raise UserError(f"{what}: cannot load {path!r} from local files ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''})") from None


@lru_cache(maxsize=2)
def load_nli(path: str, batch_size: int = 32, device: str | None = None) -> NLIModel:
    """Load an NLI classifier and its tokenizer from `path` (local files only); cached per arguments."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = load_local(path, "evaluate.nli_model",
                  lambda p: AutoModelForSequenceClassification.from_pretrained(p, local_files_only=True))
    tokenizer = load_local(path, "evaluate.nli_model", lambda p: AutoTokenizer.from_pretrained(p, local_files_only=True))
    id2label = {int(k): v for k, v in (model.config.id2label or {}).items()}
    labels = [str(id2label.get(i, f"LABEL_{i}")).strip().lower() for i in range(model.config.num_labels)]
    missing = [name for name in ("contradiction", "entailment") if name not in labels]
    if missing:
        raise UserError(f"evaluate.nli_model: {path}: config.id2label has no {' or '.join(repr(m) for m in missing)} "
                        f"label (found: {', '.join(map(str, id2label.values()))}); an NLI model with "
                        f"entailment/neutral/contradiction labels is needed")
    model.to(device or default_device()).eval()
    limit = min(getattr(tokenizer, "model_max_length", MAX_LENGTH) or MAX_LENGTH,
                getattr(model.config, "max_position_embeddings", MAX_LENGTH) or MAX_LENGTH, MAX_LENGTH)
    return NLIModel(model, tokenizer, labels, batch_size=batch_size, max_length=limit,
                    _forward_keys=forward_keys(model))
