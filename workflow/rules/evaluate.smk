# Stage 4: measurements. FID with clean-fid in legacy_tensorflow mode (the TF-Inception numbers of
# EDM and the paper) against CIFAR-10 training statistics (clean-fid's, EDM's cifar10-32x32.npz or
# the dataset's: fid.reference), or, offline, the Frechet distance in the feature space of a
# classifier trained here on the dataset (labelled as such everywhere).
# The FID of a sample set is measured by the job that makes the set (sample.smk, dg.smk).
# Trajectory diagnostics for Figures 2, 3, 6-9.


localrules:
    fetch_fid_assets,


rule fetch_fid_assets:
    output:
        **fid_asset_outputs(),
    log:
        f"{LOGS}/fetch_fid_assets.log",
    benchmark:
        f"{BENCH}/fetch_fid_assets.tsv"
    conda:
        CONDA_ENV
    params:
        aot=AOT_CLI,
        cache_dir=lambda wildcards, output: os.path.dirname(output.manifest),
        args=fetch_asset_flags(),
    shell:
        "{params.aot} fid fetch-assets --cache-dir {params.cache_dir:q} {params.args} > {log:q} 2>&1"


rule train_features:
    input:
        data=DATASET,
    output:
        f"{RESULTS}/fid/feature-net.pt",
    log:
        f"{LOGS}/train_features.log",
    benchmark:
        f"{BENCH}/train_features.tsv"
    conda:
        CONDA_ENV
    threads: threads_for("train_features")
    resources:
        **resources_for("train_features"),
    params:
        aot=AOT_CLI,
        args=flags({"device": DEVICE}),
    shell:
        "{params.aot} fid train-features --data {input.data:q} --out {output:q} {params.args} "
        "--threads {resources.cpus_per_task} > {log:q} 2>&1"


rule reference_stats:
    input:
        **reference_inputs(),
        data=DATASET,
    output:
        reference_path(),
    log:
        f"{LOGS}/reference_stats.log",
    benchmark:
        f"{BENCH}/reference_stats.tsv"
    # precomputed statistics (clean-fid's, EDM's) are a checked copy of a fetched file: no GPU job
    localrule: FID_CONFIG["reference"] in ("precomputed", "edm")
    conda:
        CONDA_ENV
    threads: threads_for("reference_stats")
    resources:
        **resources_for("reference_stats"),
    params:
        aot=AOT_CLI,
        args=reference_flags,
    shell:
        "{params.aot} fid reference --data {input.data:q} {params.args} --threads {resources.cpus_per_task} "
        "--out {output:q} > {log:q} 2>&1"


rule diagnostics:
    input:
        networks=diagnostics_networks,
    output:
        npz=f"{RESULTS}/diagnostics/{{part}}-{{key}}.npz",
        json=f"{RESULTS}/diagnostics/{{part}}-{{key}}.json",
    log:
        f"{LOGS}/diagnostics/{{part}}-{{key}}.log",
    benchmark:
        f"{BENCH}/diagnostics/{{part}}-{{key}}.tsv"
    wildcard_constraints:
        key=SAMPLER_RE,
    conda:
        CONDA_ENV
    threads: threads_for("diagnostics")
    resources:
        **resources_for("diagnostics"),
    params:
        aot=AOT_CLI,
        args=diagnostics_flags,
        networks=network_flags,
    shell:
        "{params.aot} diagnostics {params.networks} {params.args} "
        "--threads {resources.cpus_per_task} --out {output.npz:q} > {log:q} 2>&1"
