"""relearn: make a language model forget specific knowledge with ReLearn (Xu et al., ACL 2025),
and carry the unlearned model through an audited MLflow registry to an ONNX deployable."""

__version__ = "0.1.0"
