# Stage 5: Discriminator Guidance (Table 3). The discriminator of a model is trained on the model's
# first sample set at its Table 3 sampler setting (the generation job's output, never regenerated),
# with independent perturbation noise ("plain") or AOT-paired noise ("aot"); then guided sample sets
# (dg<mode>-<key>/rep<r>.npz, disjoint seeds as for every FID) are generated and measured.


check_dg_config()


if dg_classifier():

    localrules:
        fetch_dg_classifier,

    # DG publishes its ADM classifier in a Google Drive folder, which has no stable direct URL:
    # place the file by hand (login node); this job stops with the instructions if it is absent.
    rule fetch_dg_classifier:
        output:
            dg_classifier(),
        log:
            f"{LOGS}/fetch_dg_classifier.log",
        conda:
            ENV
        params:
            message=lambda wildcards, output: (
                f"error: DG feature extractor {output[0]} is missing: download "
                "32x32_classifier.pt from the ADM_classifier folder of DG's checkpoints "
                f"({DG_CLASSIFIER_FOLDER}) and place it at {output[0]}, "
                "or set dg.feature_extractor: scratch"
            ),
        shell:
            "echo {params.message:q} | tee {log:q} >&2; exit 1"


rule train_discriminator:
    input:
        **dg_feature_inputs(),
        data=DATASET,
        samples=lambda wildcards: sample_path(
            wildcards.model, dg_base_key(wildcards.model), 0
        ),
    output:
        f"{R}/dg/{{model}}/{{mode}}/discriminator.pt",
    log:
        f"{LOGS}/train_discriminator/{{model}}-{{mode}}.log",
    benchmark:
        f"{BENCH}/train_discriminator/{{model}}-{{mode}}.tsv"
    conda:
        ENV
    threads: threads_for("train_discriminator")
    resources:
        **resources_for("train_discriminator"),
    params:
        aot=AOT,
        outdir=lambda wildcards, output: os.path.dirname(output[0]),
        args=dg_train_flags,
    shell:
        "{params.aot} dg train --data {input.data:q} --samples {input.samples:q} "
        "--out {params.outdir:q} {params.args} --threads {threads} >> {log:q} 2>&1"


rule generate_dg:
    input:
        **dg_feature_inputs(),
        network=lambda wildcards: network_path(wildcards.model),
        discriminator=f"{R}/dg/{{model}}/{{mode}}/discriminator.pt",
    output:
        f"{R}/samples/{{model}}/dg{{mode}}-{{key}}/rep{{rep}}.npz",
    log:
        f"{LOGS}/generate_dg/{{model}}/dg{{mode}}-{{key}}-rep{{rep}}.log",
    benchmark:
        f"{BENCH}/generate_dg/{{model}}/dg{{mode}}-{{key}}-rep{{rep}}.tsv"
    wildcard_constraints:
        key=SAMPLER_RE,
    conda:
        ENV
    threads: threads_for("generate_dg")
    resources:
        **resources_for("generate_dg"),
    params:
        aot=AOT,
        args=dg_generate_flags,
    shell:
        "{params.aot} dg generate --network {input.network:q} "
        "--discriminator {input.discriminator:q} {params.args} --out {output:q} "
        "--threads {threads} > {log:q} 2>&1"
