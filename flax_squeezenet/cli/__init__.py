"""Command-line programs (installed as `squeezenet-*` entry points)."""
