"""Text to chunks: the chunker, its rules, clean-up and the engines' length limits."""
