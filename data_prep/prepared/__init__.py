"""The prepared data folder gpt-prepare writes and every command reads: `meta.json`
(`meta`), `tokenizer.json` and the token shards (`shards`), opened and checked as one
(`data_folder`)."""
