"""The command-line tools by audience: the user tools here (`python -m scripts.<name>`, or the `pladis-*`
console commands) over their core `scripts/cli/`; the developer tools in `scripts/dev/` and the toy model's
world in `scripts/toy/` (`python -m scripts.dev.<name>`, `python -m scripts.toy.<name>`)."""

from scripts.cli.quiet import silence_torchvision_fallback

silence_torchvision_fallback()
