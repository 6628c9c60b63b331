rule figures:
    input:
        coding=expand("results/coding/keyword/{model}.csv", model=MODELS),
        judge=expand("results/judge/{model}.csv", model=MODELS),
        entropy_statistics="results/statistics/entropy_statistics_enhanced.csv",
        entropy_profiles="results/statistics/entropy_profiles.csv",
        probes="results/probing/probes.csv",
        embeddings="results/probing/embeddings.csv",
    output:
        **{
            name: report(
                f"results/figures/{name}.png",
                caption=f"../report/captions/{name}.rst",
                category="Figures",
            )
            for name in FIGURES
        },
    log:
        "results/logs/figures.log",
    conda:
        "../envs/analysis.yaml"
    threads: 1
    params:
        seed=config["statistics"]["seed"],
    script:
        "../workflow/scripts/figures.py"


rule report:
    input:
        unpack(get_injection_report_inputs),
        unpack(get_selfknowledge_outputs),
        profile="results/statistics/introspection_profile.csv",
        profile_correlations="results/statistics/introspection_correlations.csv",
        profile_summary="results/statistics/introspection_profile.json",
        generations=expand(
            "results/generations/{model}/{prompt}.json",
            model=MODELS,
            prompt=PROMPT_IDS[0],
        ),
        coding=expand("results/coding/keyword/{model}.csv", model=MODELS),
        judge=expand("results/judge/{model}.csv", model=MODELS),
        lexicon=config["coding"]["lexicon"],
        labelled_examples=config["coding"]["labelled_examples"],
        content="results/statistics/content_statistics.csv",
        mixed_effects="results/statistics/mixed_effects.json",
        scaling="results/statistics/scaling_statistics.json",
        entropy="results/statistics/entropy_statistics_enhanced.csv",
        agreement="results/statistics/agreement_statistics.json",
        probing="results/statistics/probing_statistics.json",
        figures=expand("results/figures/{name}.png", name=FIGURES),
    output:
        report(
            "results/report.md",
            caption="../report/captions/report.rst",
            category="Report",
        ),
    log:
        "results/logs/report.log",
    conda:
        "../envs/analysis.yaml"
    threads: 1
    params:
        settings=canonical(
            {
                key: config[key]
                for key in (
                    "study",
                    "generation",
                    "conditions",
                    "judge",
                    "coding",
                    "statistics",
                    "injection",
                    "selfknowledge",
                )
            }
        ),
    script:
        "../workflow/scripts/report.py"
