"""Vendored BERT teacher: modeling, WordPiece tokenization, BertAdam and file resolution."""
