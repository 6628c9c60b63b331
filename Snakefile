# llm-introspection: introspection experiments on open language models.
# Usage: README.md. Study config: config/config.yaml (schema: config/schema/config.schema.yaml).


configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/models.smk"
include: "rules/generate.smk"
include: "rules/trace.smk"


rule all:
    default_target: True
    input:
        get_study_outputs(),
