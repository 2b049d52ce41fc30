"""Training: the loop (loop.py), its optimizer, checkpoints and resuming, devices and process groups,
the hardening options of the unlearning step, and progress lines."""
