"""Evaluation: the question suite, scoring, prompts, the lm-eval backend and the eval command."""
