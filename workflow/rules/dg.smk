# Stage 5: Discriminator Guidance (Table 3). The discriminator of a model is trained on the model's
# first sample set at its Table 3 sampler setting (the generation job's output, never regenerated),
# with independent perturbation noise ("plain") or AOT-paired noise ("aot"), with the paper's recipe
# of the model's part (dg.uncond, dg.cond) or, for an EDM baseline's (EDM+DG), DG's
# (dg.baseline.<part>); or, where dg.discriminators gives a file (DG's released heads), that file is
# imported instead. Guided sample sets (dg<mode>-<key>/rep<r>.npz) use the seeds of
# guided_seeds(), disjoint from every plain set a discriminator trains on; the job that makes a
# guided set measures its FID (fid/<model>/dg<mode>-<key>/rep<r>.json), as for plain sets.


if dg_placed_files():

    localrules:
        place_dg_file,

    # DG publishes its ADM classifier and discriminators in Google Drive folders, which have no
    # stable direct URL: place the files by hand (login node); this job stops with the instructions
    # if one is absent.
    rule place_dg_file:
        output:
            "{placed}",
        log:
            f"{LOGS}/place_dg_file/{{placed}}.log",
        wildcard_constraints:
            placed=names_regex(dg_placed_files()),
        conda:
            CONDA_ENV
        params:
            message=lambda wildcards: dg_placed_files()[wildcards.placed],
        shell:
            "echo {params.message:q} | tee {log:q} >&2; exit 1"


localrules:
    import_discriminator,


# A given discriminator file (dg.discriminators) becomes the (model, mode)'s discriminator: DG's
# bare head with DG's ADM classifier, checked and written in our format (no training).
rule import_discriminator:
    input:
        unpack(dg_import_inputs),
    output:
        f"{RESULTS}/dg/{{model}}/{{mode}}/discriminator.pt",
    log:
        f"{LOGS}/import_discriminator/{{model}}-{{mode}}.log",
    wildcard_constraints:
        model=discriminator_pairs_regex(given_discriminators(), given=True),
    conda:
        CONDA_ENV
    params:
        aot=AOT_CLI,
        args=dg_import_flags,
    shell:
        "{params.aot} dg import {input.discriminator:q} --out {output:q} {params.args} "
        "> {log:q} 2>&1"


DISCRIMINATOR_LOG = f"{LOGS}/train_discriminator/{{model}}-{{mode}}.log"


rule train_discriminator:
    input:
        **dg_feature_inputs(),
        data=DATASET,
        samples=lambda wildcards: sample_path(
            wildcards.model, dg_base_key(wildcards.model), 0
        ),
    output:
        f"{RESULTS}/dg/{{model}}/{{mode}}/discriminator.pt",
    log:
        DISCRIMINATOR_LOG,
    benchmark:
        f"{BENCH}/train_discriminator/{{model}}-{{mode}}.tsv"
    wildcard_constraints:
        model=discriminator_pairs_regex(given_discriminators(), given=False),
    conda:
        CONDA_ENV
    threads: threads_for("train_discriminator")
    resources:
        **resources_for(
            "train_discriminator", work=discriminator_work_s, resumable=True
        ),
    params:
        aot=AOT_CLI,
        outdir=lambda wildcards, output: os.path.dirname(output[0]),
        args=dg_train_flags,
        env=requeue_env("train_discriminator"),
        log_segments=log_segments(DISCRIMINATOR_LOG),
    shell:
        "{params.log_segments} {params.env} {params.aot} dg train --data {input.data:q} --samples {input.samples:q} "
        "--out {params.outdir:q} {params.args} --threads {resources.cpus_per_task} >> {log:q} 2>&1"


GENERATE_DG_LOG = f"{LOGS}/generate_dg/{{model}}/dg{{mode}}-{{key}}.log"


rule generate_dg:
    input:
        **dg_feature_inputs(),
        **fid_feature_inputs(),
        network=lambda wildcards: network_path(wildcards.model),
        discriminator=f"{RESULTS}/dg/{{model}}/{{mode}}/discriminator.pt",
        ref=reference_path(),
    output:
        samples=set_files(sample_path("{model}", "dg{mode}-{key}", "{rep}")),
        fid=set_files(fid_path("{model}", "dg{mode}-{key}", "{rep}")),
    log:
        GENERATE_DG_LOG,
    benchmark:
        f"{BENCH}/generate_dg/{{model}}/dg{{mode}}-{{key}}.tsv"
    wildcard_constraints:
        key=SAMPLER_RE,
    group:
        set_group("guided")
    conda:
        CONDA_ENV
    threads: threads_for("generate_dg")
    resources:
        **resources_for(
            "generate_dg", work=generate_dg_work_s, resumable=True, grouped=True
        ),
    params:
        aot=AOT_CLI,
        env=requeue_env("generate_dg"),
        log_segments=log_segments(GENERATE_DG_LOG),
        args=dg_generate_flags,
        measure=measure_flags,
    shell:
        "{params.log_segments} {params.env} {params.aot} dg generate --network {input.network:q} "
        "--discriminator {input.discriminator:q} {params.args} --out {output.samples:q} "
        "--fid-ref {input.ref:q} --fid-out {output.fid:q} {params.measure} "
        "--threads {resources.cpus_per_task} >> {log:q} 2>&1"
