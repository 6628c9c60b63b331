"""The base-vs-instruct study: keyword coding (coding), the LLM judge (rubric, judge), probes and
embeddings (probing), statistics (statistics) and the analysis rules' jobs (analysis)."""
