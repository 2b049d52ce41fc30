"""Serving the model version behind a registry alias (`relearn serve`).

- `engine`: one loaded version (ONNX Runtime or torch) that generates a batch of requests token by
  token, through the same prompt encoding as training and evaluation.
- `batcher`: a bounded queue and one worker thread that groups waiting requests into batches.
- `registry`: which version an alias names, whether it may be served, and its files.
- `follower`: polls the alias (and takes MLflow webhooks), loads a new version beside the old one
  and switches when it passed its own check.
- `metrics`: Prometheus metrics, named after vLLM's.
- `app`: the HTTP routes (OpenAI and MLflow scoring compatible), `server`: the wiring.
"""
