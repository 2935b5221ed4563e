"""Corpus preparation: documents -> vocabulary (characters, or a byte-level BPE) -> train/val
token shards, by stage:

    read/       finding the inputs and reading their documents (text, archives, records)
    tokenize/   the tokenizers (characters, byte-level BPE), their file, building or learning one
    passes/     the two passes over the corpus: code points and counts, then token ids
    prepared/   the prepared data folder: meta.json, token shards, loading one
    prepare.py  the two passes and the tokenizer between them; cli.py: the gpt-prepare command

    import data_prep
    data = data_prep.load("data")
    data.tokenizer.encode("hello"), data.split("train")
"""
from .errors import DataError
from .prepared.data_folder import PreparedData, load
from .tokenize.bpe import BpeTokenizer
from .tokenize.char import CharTokenizer
from .tokenize.kinds import Tokenizer, tokenizer_from_dict, tokenizer_from_json

__all__ = ["BpeTokenizer", "CharTokenizer", "DataError", "PreparedData", "Tokenizer", "load", "tokenizer_from_dict",
           "tokenizer_from_json"]
