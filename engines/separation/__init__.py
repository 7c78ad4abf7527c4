"""Stem separation: `models` loads a model (HTDemucs, Spleeter, Open-Unmix), `streaming` runs it on
the windows of a live stream, `files` on whole files. Import from those modules."""
