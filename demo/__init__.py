"""`xiaophi-demo` (what `make demo` and the compose trainer run): it spans the packages —
training's corpora and pipeline, a knowledge base, the server — so it lives in none of them."""
