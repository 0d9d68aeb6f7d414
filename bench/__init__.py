"""Benchmarks: one module per area, each with `main(argv) -> int`; run via `llm4msr bench AREA`.

Results go to docs/benchmarks/<area>.md together with the command that produced them.
"""
