"""`gpt-serve`: a trained model behind an HTTP API that speaks OpenAI's completions, with
continuous batching (`engine`), Prometheus metrics and a page to try it in a browser."""
