"""Transferability estimators: their scores, held against measured transfer and depth, and compared in a report."""
