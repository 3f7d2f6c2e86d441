"""The embedded toy model's world, run as `python -m scripts.toy.<name>`: its drawn data, trainer, pixel
scorer, evaluation grid (`pladis-evaluate --toy`) and attention statistics."""
