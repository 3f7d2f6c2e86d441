"""The command-line tools (`python -m scripts.<name>`, or the `pladis-*` console commands)."""

from scripts.cli.quiet import silence_torchvision_fallback

silence_torchvision_fallback()
