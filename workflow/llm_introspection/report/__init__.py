"""The study's figures (figures) and the markdown report (markdown)."""
