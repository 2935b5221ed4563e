"""Corpus preparation: documents -> vocabulary (characters, or a byte-level BPE) -> train/val
token shards.

    import data_prep
    data = data_prep.load("data")
    data.tokenizer.encode("hello"), data.split("train")
"""
from .any_tokenizer import Tokenizer, tokenizer_from_dict, tokenizer_from_json
from .bpe import BpeTokenizer
from .dataset import PreparedData, load
from .errors import DataError
from .tokenizer import CharTokenizer

__all__ = ["BpeTokenizer", "CharTokenizer", "DataError", "PreparedData", "Tokenizer", "load", "tokenizer_from_dict", "tokenizer_from_json"]
