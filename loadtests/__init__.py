"""tokensvc benchmarks: `python -m loadtests http|micro|all` (see loadtests/README.md)."""
