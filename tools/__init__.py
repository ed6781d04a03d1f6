"""Command-line tools that work on run folders (``python -m tools.<name>``)."""
