"""xiaophi rag package."""
