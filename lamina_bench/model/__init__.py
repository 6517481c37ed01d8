"""The performance model: roofline and measured operator times, iteration model, trace simulator, search, cost.

Pure functions and dataclasses; no I/O besides reading profiles and traces.
"""
