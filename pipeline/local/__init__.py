"""Embedded local mode: the compiled pipeline run on one machine with local stand-ins."""
