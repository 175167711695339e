# Stage 3: sample sets. One job per model x sampler setting x repeat, keyed by its parameters
# (samples/<model>/<solver>-n<steps>-rho<rho>/rep<r>.npz), so a set that several tables use is made
# once. Repeat r covers seeds [r*n, (r+1)*n): the three FID measurements use disjoint seeds.
# Generation keeps finished shards in <out>.shards/ and resumes after a kill; the .npz appears last.


rule generate:
    input:
        network=lambda wc: network_path(wc.model),
    output:
        f"{R}/samples/{{model}}/{{solver}}-n{{steps}}-rho{{rho}}{{churn}}/rep{{rep}}.npz",
    wildcard_constraints:
        churn=r"(-churn\d+(\.\d+)?)?",
    params:
        seeds=lambda wc: seeds_for(wc.rep),
        churn=SAMPLING.get("S_churn", 0),
        sigma_min=SAMPLING.get("sigma_min", 0.002),
        sigma_max=SAMPLING.get("sigma_max", 80),
        batch=config["generate"].get("batch", 256),
        shard=config["generate"].get("shard_size", 1000),
        fast="--fast --compile" if config["generate"].get("fast") else "",
    log:
        f"{LOGS}/generate/{{model}}/{{solver}}-n{{steps}}-rho{{rho}}{{churn}}-rep{{rep}}.log",
    benchmark:
        f"{BENCH}/generate/{{model}}/{{solver}}-n{{steps}}-rho{{rho}}{{churn}}-rep{{rep}}.tsv"
    threads: threads_for("generate")
    resources:
        **resources_for("generate", 240, 16000),
    conda:
        ENV
    shell:
        "{PY} -m aot.generate --network {input.network:q} --model-name {wildcards.model:q} "
        "--seeds {params.seeds} --out {output:q} --solver {wildcards.solver} --steps {wildcards.steps} "
        "--rho {wildcards.rho} --S-churn {params.churn} --sigma-min {params.sigma_min} "
        "--sigma-max {params.sigma_max} --batch {params.batch} --shard-size {params.shard} "
        "--device {DEVICE} --threads {threads} {params.fast} > {log:q} 2>&1"
