"""The command-line core every user tool in `scripts/` builds on, one module per job; it imports no module above it.

`assets` (paths and tiny defaults), `registry` (pipelines and schedulers), `options` (argparse and
checks), `loading` (pipelines, LoRA, call arguments), `preprocess` (control images), `records` (run settings
and the atomic writer), `grid` (the grid writer), `prompts` (prompt files and the generate/evaluate folder
layout), `entry_points` (the console commands), `recipes` (the examples' grid).
"""
