"""Evaluation helpers: bits per byte, few-shot fact accuracy."""
