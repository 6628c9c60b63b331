# llm-introspection: introspection experiments on open language models.
# Usage: README.md. Study config: config/config.yaml (schema: config/schema/config.schema.yaml).


# The default study, unless the command line names its own config (--configfile): then that
# file alone is the study, not merged into the default (so its models are not added to ours).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "report/workflow.rst"


# Model jobs request model_jobs=1; profiles/default (loaded on every run) allows one at a time, so
# on one machine each gets the whole CPU or GPU. Scoped local, the limit applies inside each
# submitted job but not across a cluster's jobs: `--profile slurm` runs model jobs side by side.
resource_scopes:
    model_jobs="local",


include: "rules/common.smk"
include: "rules/models.smk"
include: "rules/generate.smk"
include: "rules/trace.smk"
include: "rules/coding.smk"
include: "rules/statistics.smk"
include: "rules/entropy.smk"
include: "rules/judge.smk"
include: "rules/probes.smk"
include: "rules/injection.smk"
include: "rules/selfknowledge.smk"
include: "rules/finetune.smk"
include: "rules/report.smk"


onerror:
    print_failed_logs()


localrules:
    all,


rule all:
    default_target: True
    input:
        get_study_outputs(),
