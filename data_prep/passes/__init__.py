"""gpt-prepare's two passes over the corpus, in worker processes (`workers`). Pass 1
(`pass1_read`) reads each unit of work into a code point file (`codepoint_files`) and counts
its characters, which the main process sums (`pass1_totals`); pass 2 writes every unit's
token ids into its place in the shards (`pass2_char`, `pass2_bpe`), segment by segment
(`segments`)."""
