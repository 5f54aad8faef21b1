"""Data: dataset sources read into the store, the store itself, class splits, batches, resumable shards."""
