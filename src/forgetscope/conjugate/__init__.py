"""Conjugate prompting for language models: prompt transforms, conflict probes, the miniature experiment."""
