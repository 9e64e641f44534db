"""Modal screens: help, confirmation, choice."""
