"""The audited MLflow registry: one run and one model version per unlearning, gated promotion.

- `tracking`: where the MLflow store lives (an absolute SQLite path at the project root).
- `gates`: flatten metrics, check them against the promotion gates of params.yaml.
- `pyfunc`: the unlearned model (base + LoRA adapter) as an MLflow pyfunc.
- `versions`: register a version, list versions, promote with an approval, attach an export.

Only counts, hashes, params and metrics reach MLflow: never the text of the forget set.
"""
