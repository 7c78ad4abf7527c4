"""Flowstate Bridge: a local daemon that runs AI audio engines beside a DAW."""

__version__ = "0.1.0"
