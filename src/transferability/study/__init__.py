"""The study: its findings tested on the user's runs, the statistics behind the verdicts, its published numbers."""
