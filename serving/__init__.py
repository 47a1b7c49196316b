"""xiaophi serving package."""
