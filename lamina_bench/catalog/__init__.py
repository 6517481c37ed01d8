"""Catalogs: devices with specs and prices, model configs, workloads (traces), bench models."""
