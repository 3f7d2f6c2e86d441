"""Thin PLADIS subclasses of diffusers pipelines, one module per reference pipeline."""
