"""One module per widget of the app."""
