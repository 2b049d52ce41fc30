"""Forget-set augmentation (ReLearn steps 2-5): question variants, vague answers, leak check, mixing."""
