"""Data: reading tables, label maps, tokenization and batching."""
