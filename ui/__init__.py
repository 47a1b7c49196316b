"""xiaophi ui package."""
