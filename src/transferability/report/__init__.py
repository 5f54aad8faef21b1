"""The report: its page, figures and tables."""
