"""Sweeps: a TOML spec expanded into typed points, each measured, predicted or simulated into a row."""
