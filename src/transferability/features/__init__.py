"""Features: per-layer activations of trained networks, the Full-Network Embedding, and its linear SVM."""
