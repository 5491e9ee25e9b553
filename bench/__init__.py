"""Benchmark and fault-injection scripts; each runs standalone (`.venv/bin/python bench/<name>.py`)."""
