"""The model: building or loading it (model.py), preparing a pretrained base (base_model.py), the
prompt encoding every stage shares (encoding.py) and generation (generation.py)."""
