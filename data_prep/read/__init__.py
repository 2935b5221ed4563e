"""Reading the corpus: finding the input files (`inputs`), and the documents in each
(`documents`), through compressed streams (`streams`), tar archives (`tar`), JSON and
Parquet records (`records`) and UTF-8 decoding (`utf8`)."""
