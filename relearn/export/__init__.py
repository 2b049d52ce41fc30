"""Export an unlearned model for production: merge the LoRA adapter into the target model, export
it to ONNX (with past key/values), quantize its weights to int8 for CPUs (weight-only: activations
stay fp32), and check that the exported models still generate the same greedy tokens as the
PyTorch model.

See `relearn.export.onnx`.
"""
