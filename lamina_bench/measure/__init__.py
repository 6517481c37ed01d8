"""Measured points: the reference implementation run here, operator profiling, NVML telemetry."""
