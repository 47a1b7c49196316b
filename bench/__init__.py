"""Benchmarks and the GPU check (`make bench-…`, `make gpu-check`): they measure the packages,
span them, and ship with none of them."""
