"""The command-line core every script in `scripts/` builds on, one module per job.

`assets` (paths and tiny defaults), `registry` (pipelines and schedulers), `options` (argparse and
checks), `loading` (pipelines, LoRA, call arguments), `records` (run settings and the atomic writer),
`prompts` (prompt files and the generate/evaluate folder layout), `recipes` (the examples' grid).
"""
