# Stage 3: sample sets. One job per model x sampler setting writes all repeats of the set
# (samples/<model>/<key>/rep<r>.npz, the key as aot.keys writes it: heun-n18-rho7) and loads the
# network once; a set that several tables use is made once. Repeat r covers seeds [r*n, (r+1)*n):
# the FID measurements use disjoint seeds. Generation keeps finished shards in <out>.shards/ and
# resumes after a kill or a requeue; each .npz appears last. With several GPUs the job runs one
# process per GPU under torchrun, and the ranks share the shards (the files are the same).


rule generate:
    input:
        network=lambda wildcards: network_path(wildcards.model),
    output:
        set_files(f"{R}/samples/{{model}}/{{key}}/rep{{rep}}.npz"),
    log:
        f"{LOGS}/generate/{{model}}/{{key}}.log",
    benchmark:
        f"{BENCH}/generate/{{model}}/{{key}}.tsv"
    wildcard_constraints:
        key=SAMPLER_RE,
    group:
        "sets"
    conda:
        ENV
    threads: threads_for("generate")
    resources:
        **resources_for("generate"),
    params:
        aot=launcher,
        env=requeue_env("generate"),
        args=generate_flags,
        threads=rank_threads,
    shell:
        "{params.env} {params.aot} generate --network {input.network:q} {params.args} "
        "--out {output:q} {params.threads} > {log:q} 2>&1"
