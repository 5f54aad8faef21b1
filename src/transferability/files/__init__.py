"""Files that survive a kill: atomic writes, self-checking (sealed) files, and training checkpoints."""
