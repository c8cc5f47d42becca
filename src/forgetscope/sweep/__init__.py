"""Sweeps: grids of LoRA / rsLoRA fine-tunes, stored record by record, resumable, local or on Ray."""
