"""Attention maps recorded from a real denoising run (dense and PLADIS maps per layer), for the attention-maps
tool and research. Nothing in the PLADIS core imports it."""
