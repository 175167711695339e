# Stage 2: one network per model, trained here (EDM or EDM-AOT) or imported from an official EDM
# pickle. Either way the rest of the pipeline reads our network file, models/<name>/network-final.pt.
# Training resumes from models/<name>/training-state.pt: a job killed by Slurm's time limit (with
# --signal or its own reading of the job's end time, it saves its state and exits 75) puts itself
# back into the Slurm queue (aot.runtime.requeue_slurm_job) and continues where it stopped.


TRAIN_LOG = f"{LOGS}/train/{{model}}.log"


rule train:
    input:
        data=DATASET,
    output:
        network=f"{RESULTS}/models/{{model}}/network-final.pt",
    log:
        TRAIN_LOG,
    benchmark:
        f"{BENCH}/train/{{model}}.tsv"
    wildcard_constraints:
        model=names_regex(TRAINED),
    conda:
        CONDA_ENV
    threads: threads_for("train")
    resources:
        **resources_for("train", work=train_work_s, resumable=True),
    params:
        aot=launcher,
        env=lambda wildcards: requeue_env("train"),
        log_segments=log_segments(TRAIN_LOG),
        outdir=lambda wildcards, output: os.path.dirname(output.network),
        args=train_flags,
        threads=rank_threads,
    shell:
        "{params.log_segments} {params.env} {params.aot} train --outdir {params.outdir:q} --data {input.data:q} "
        "{params.args} {params.threads} >> {log:q} 2>&1"


localrules:
    fetch_edm_pickle,


rule fetch_edm_pickle:
    output:
        network=f"{RESULTS}/models/{{model}}/network-final.pt",
    log:
        f"{LOGS}/fetch_edm_pickle/{{model}}.log",
    benchmark:
        f"{BENCH}/fetch_edm_pickle/{{model}}.tsv"
    wildcard_constraints:
        model=names_regex(IMPORTED),
    conda:
        CONDA_ENV
    params:
        aot=AOT_CLI,
        url=lambda wildcards: MODELS[wildcards.model]["pickle"],
        args=edm_pickle_flags,
    shell:
        "{params.aot} checkpoints import-edm {params.url:q} {output.network:q} {params.args} "
        "> {log:q} 2>&1"
