"""Benchmarks: attention against sequence length, the training step, and the PyTorch twin
they are compared with in the same run. Measuring helpers in measure.py."""
