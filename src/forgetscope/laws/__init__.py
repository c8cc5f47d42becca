"""Scaling laws of forgetting: functional forms, robust fits, validation, forecasts.

numpy / scipy / pandas only (no torch import), so fitting a sweep is instant.
"""
