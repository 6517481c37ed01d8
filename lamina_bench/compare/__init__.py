"""Regression comparison of two runs (or benchmark files), its reports, and CI baselines."""
