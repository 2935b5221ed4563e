"""Corpus preparation: documents -> character vocabulary -> train/val token shards.

    import data_prep
    data = data_prep.load("data")
    data.tokenizer.encode("hello"), data.split("train")
"""
from .dataset import PreparedData, load
from .errors import DataError
from .tokenizer import CharTokenizer

__all__ = ["CharTokenizer", "DataError", "PreparedData", "load"]
