"""Training harness: the rubric as a TRL reward (GRPO) and SFT data synthesis."""
