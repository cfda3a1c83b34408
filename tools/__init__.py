"""Developer tools: code generation and benchmarks."""
