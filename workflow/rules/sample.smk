# Stage 3: sample sets and their FID. One job per model x sampler setting writes all repeats of the
# set (samples/<model>/<key>/rep<r>.npz, the key as aot.keys writes it: heun-n18-rho7) from the
# network loaded once, then measures each repeat into fid/<model>/<key>/rep<r>.json in the same
# process (as `aot fid measure` does); a set that several tables use is made once. Repeat r covers
# seeds [r*n, (r+1)*n): the FID measurements use disjoint seeds. Generation keeps finished shards in
# <out>.shards/ and resumes after a kill or a requeue; each .npz appears last, and the shards stay
# until the measurement is written, so a failed measurement costs its rerun only the merge. With
# several GPUs the job runs one process per GPU under torchrun (the ranks share the shards) and
# rank 0 measures.


GENERATE_LOG = f"{LOGS}/generate/{{model}}/{{key}}.log"


rule generate:
    input:
        **fid_feature_inputs(),
        network=lambda wildcards: network_path(wildcards.model),
        ref=reference_path(),
    output:
        samples=set_files(sample_path("{model}", "{key}", "{rep}")),
        fid=set_files(fid_path("{model}", "{key}", "{rep}")),
    log:
        GENERATE_LOG,
    benchmark:
        f"{BENCH}/generate/{{model}}/{{key}}.tsv"
    wildcard_constraints:
        key=SAMPLER_RE,
    group:
        set_group("sets")
    conda:
        CONDA_ENV
    threads: threads_for("generate")
    resources:
        **resources_for("generate", work=generate_work_s, resumable=True, grouped=True),
    params:
        aot=launcher,
        env=requeue_env("generate"),
        log_segments=log_segments(GENERATE_LOG),
        args=generate_flags,
        measure=measure_flags,
        threads=rank_threads,
    shell:
        "{params.log_segments} {params.env} {params.aot} generate --network {input.network:q} {params.args} "
        "--out {output.samples:q} --fid-ref {input.ref:q} --fid-out {output.fid:q} {params.measure} "
        "{params.threads} >> {log:q} 2>&1"
