"""Evaluation: every artifact of the chain on the same held-out ids, through transformers and llama.cpp."""
