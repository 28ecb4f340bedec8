"""Known-discrepancy entries, one module per framework family."""
