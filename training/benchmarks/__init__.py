"""Benchmarks: `make bench-tokenizer`, `make bench-train` (CPU) and the GPU pretrain benchmark."""
