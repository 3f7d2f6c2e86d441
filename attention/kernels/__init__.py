"""The PLADIS math on plain tensors: sparse maps, the two rules (cross-attention, the joint text block), every
kernel computing them (chunked CPU, sync-free torch, Triton, autograd, the reference) and the one table that picks
one. No diffusers import and no model objects here; above it, it reads only `attention.settings` and `validation`."""
