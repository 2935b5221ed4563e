"""The tokenizers and their file: one token per character (`char`) or a byte-level BPE
(`bpe`), stored as a Hugging Face `tokenizers` JSON (`tokenizer_file`) and read back as the
right kind (`kinds`); a character vocabulary built from counts (`char_vocabulary`), a BPE
learned from text (`bpe_training`, cutting text only where its ids do not change:
`safe_cuts`), or a base model's tokenizer (`vocab_from`)."""
