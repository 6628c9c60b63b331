"""Concept injection (Lindsey 2025) and localization (Godet): concept vectors (concepts), the
experiments' texts (texts), a sweep's cells (cell), trial inputs (inputs), one module per family of
experiments (detection, localization, thought), grading, statistics and the rules' jobs (jobs).
What each experiment is lives in llm_introspection.registry."""
