# Stage 3: sample sets. One job per model x sampler setting x repeat, keyed by its parameters
# (samples/<model>/<key>/rep<r>.npz, the key as aot.keys writes it: heun-n18-rho7), so a set that
# several tables use is made once. Repeat r covers seeds [r*n, (r+1)*n): the FID measurements use
# disjoint seeds. Generation keeps finished shards in <out>.shards/ and resumes after a kill; the
# .npz appears last.


rule generate:
    input:
        network=lambda wildcards: network_path(wildcards.model),
    output:
        f"{R}/samples/{{model}}/{{key}}/rep{{rep}}.npz",
    log:
        f"{LOGS}/generate/{{model}}/{{key}}-rep{{rep}}.log",
    benchmark:
        f"{BENCH}/generate/{{model}}/{{key}}-rep{{rep}}.tsv"
    wildcard_constraints:
        key=SAMPLER_RE,
    conda:
        ENV
    threads: threads_for("generate")
    resources:
        **resources_for("generate"),
    params:
        aot=AOT,
        args=generate_flags,
    shell:
        "{params.aot} generate --network {input.network:q} {params.args} --out {output:q} "
        "--threads {threads} > {log:q} 2>&1"
