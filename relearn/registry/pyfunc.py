"""The unlearned model as an MLflow pyfunc: a local base model plus the ReLearn LoRA adapter (or a
distilled model alone, without the `adapter` artifact).

Artifacts (local copies made by MLflow when the model is loaded):
- `base_model`: a directory that `from_pretrained` reads (model and tokenizer),
- `adapter`: the peft adapter directory,
- `generation`: a JSON file with `prompt_format` (relearn.modeling.encoding.PromptFormat as a mapping; an older
  `prompt_template` string means the plain format), `max_new_tokens`, `batch_size` (and `dtype`).

Input: a DataFrame with a `question` column, or a list of questions. Output: a list of answers.
The signature (SIGNATURE) is one unnamed string column, so the MLflow UI shows the input as strings
and MLflow passes both forms on (a named `question` column would make it reject a plain list of
questions before `predict` sees it); `questions_from` checks the input. The input example
(INPUT_EXAMPLE) is a general question, never a forget-set one: it is stored in clear beside the model.
Nothing is ever fetched from a hub: both directories travel inside the logged model.
"""
from __future__ import annotations

import json
from typing import Any

import mlflow.pyfunc
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

from relearn.errors import UserError

GENERATION_KEYS = ("max_new_tokens", "batch_size")
SIGNATURE = ModelSignature(inputs=Schema([ColSpec("string")]), outputs=Schema([ColSpec("string")]))
INPUT_EXAMPLE = ["What is the capital of France?"]


def questions_from(model_input) -> list[str]:
    """The questions in a DataFrame's `question` column, a list of strings or a single string."""
    if isinstance(model_input, str):
        return [model_input]
    if isinstance(model_input, dict) and "question" in model_input:
        return questions_from(model_input["question"])
    columns = getattr(model_input, "columns", None)
    if columns is not None and list(columns) == [0]:
        # a list of questions after MLflow's signature check: one unnamed string column
        model_input = model_input[0]
        columns = None
    if columns is not None:
        if "question" not in columns:
            raise UserError(f"model input needs a 'question' column (got columns: {', '.join(map(str, columns))})")
        return [str(q) for q in model_input["question"].tolist()]
    if hasattr(model_input, "tolist"):  # a pandas Series or numpy array
        model_input = model_input.tolist()
    if isinstance(model_input, (list, tuple)) and all(isinstance(q, str) for q in model_input):
        return list(model_input)
    raise UserError(f"model input must be a DataFrame with a 'question' column or a list of strings, "
                    f"got {type(model_input).__name__}")


class UnlearnedModel(mlflow.pyfunc.PythonModel):
    """Base model + LoRA adapter, answering questions with greedy generation."""

    # MLflow 3 wraps `predict` for type-hint validation and warns at class definition when there
    # are no hints (every command importing this module printed it); this model checks its input
    # itself (`questions_from`), so it opts out.
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        from relearn.modeling.model import load_with_adapter

        with open(context.artifacts["generation"], encoding="utf-8") as f:
            settings: dict[str, Any] = json.load(f)
        missing = [k for k in GENERATION_KEYS if k not in settings]
        if missing:
            raise ValueError(f"generation artifact lacks {', '.join(missing)}")
        if "prompt_format" not in settings and "prompt_template" not in settings:
            raise ValueError("generation artifact lacks prompt_format")
        self.settings = settings
        self.model, self.tokenizer = load_with_adapter(  # no adapter artifact: a distilled model
            context.artifacts["base_model"], context.artifacts.get("adapter"), settings.get("dtype", "float32"))

    # model_input is left unannotated on purpose: MLflow 3 turns type hints on `predict` into
    # input validation, and this model accepts both a DataFrame and a list of strings.
    def predict(self, context, model_input, params: dict[str, Any] | None = None) -> list[str]:
        from relearn.modeling.generation import generate_answers

        questions = questions_from(model_input)
        if not questions:
            return []
        from relearn.modeling.encoding import PromptFormat, as_format

        s = self.settings
        fmt = PromptFormat.from_dict(s["prompt_format"]) if "prompt_format" in s else as_format(s["prompt_template"])
        return generate_answers(self.model, self.tokenizer, questions, fmt,
                                int(s["max_new_tokens"]), int(s["batch_size"]))
